// pm2rs: evaluates a JavaScript ecosystem file (run as `node --input-type=module -e <this> -- FILE`).
// The file is loaded with a dynamic import(), so node decides CommonJS or ESM by its own rules
// (.cjs, .mjs, the nearest package.json's "type"). Its default export (module.exports for CommonJS),
// or else its named exports, must be plain data.
// Exit 0: stdout is the configuration as JSON.
// Exit 3: stdout is a JSON array of [key path, problem] for values JSON cannot carry.
import { pathToFileURL } from 'node:url';

const file = process.argv[1];
// What the configuration itself prints goes to stderr: stdout carries only the result.
const writeResult = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);

const ns = await import(pathToFileURL(file).href);
const exported = 'default' in ns ? await ns.default : { ...ns };

const problems = [];
const ancestors = new Set();
const join = (path, key) => (path === '' ? key : `${path}.${key}`);

function plain(value, path) {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      if (Number.isFinite(value)) return value;
      problems.push([path, `the value is ${value}, not a finite number`]);
      return null;
    case 'undefined':
      problems.push([path, 'the value is undefined (an unset process.env variable?); give it a value, or null to leave the key unset']);
      return null;
    case 'function':
      problems.push([path, 'the value is a function; an ecosystem holds data only (strings, numbers, booleans, arrays and objects)']);
      return null;
    case 'bigint':
      problems.push([path, 'the value is a BigInt; write a plain number']);
      return null;
    case 'symbol':
      problems.push([path, 'the value is a Symbol; write a string']);
      return null;
  }
  if (value === null) return null;
  if (ancestors.has(value)) {
    problems.push([path, 'the value contains itself (a circular reference)']);
    return null;
  }
  ancestors.add(value);
  try {
    if (Array.isArray(value)) return Array.from(value, (item, i) => plain(item, `${path}[${i}]`));
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      const kind = value.constructor && value.constructor.name ? value.constructor.name : 'object';
      problems.push([path, `the value is a ${kind}, not plain data; write a string, number, array or { ... } object`]);
      return null;
    }
    const out = {};
    for (const key of Object.keys(value)) {
      let item;
      try {
        item = value[key];
      } catch (e) {
        problems.push([join(path, key), `reading the value threw: ${e && e.message ? e.message : e}`]);
        continue;
      }
      out[key] = plain(item, join(path, key));
    }
    return out;
  } finally {
    ancestors.delete(value);
  }
}

const data = plain(exported, '');
const [text, code] = problems.length ? [JSON.stringify(problems), 3] : [JSON.stringify(data), 0];
writeResult(text + '\n', () => process.exit(code));
