// pm2rs preload shim, loaded into Node apps with NODE_OPTIONS="--require <this file>".
// It lets an unmodified server.listen(port) use the socket the pm2rs daemon handed over
// (systemd protocol: LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES, fds from 3) or, in cluster mode
// for a port the config does not declare, a socket it asks the daemon for over the IPC channel
// (the daemon binds it once and gives every instance the same port). It reports readiness over
// the IPC channel, and drains gracefully on the stop signal: stop accepting, answer every further
// request with `Connection: close`, exit once the last connection is gone.
'use strict';
(function pm2rsShim() {
  const net = require('net');
  const env = process.env;

  // Sockets handed to this very process, by port.
  const handed = new Map();
  const count = parseInt(env.LISTEN_FDS || '0', 10);
  if (count > 0 && parseInt(env.LISTEN_PID || '0', 10) === process.pid) {
    const names = (env.LISTEN_FDNAMES || '').split(':');
    for (let i = 0; i < count; i++) {
      const m = /^port-(\d+)$/.exec(names[i] || '');
      if (m && !handed.has(Number(m[1]))) handed.set(Number(m[1]), 3 + i);
    }
  }
  const clusterMode = env.PM2RS_EXEC_MODE === 'cluster';
  // Do not pass them on to processes this app starts (they inherit NODE_OPTIONS, so they load
  // this shim too, which then stays inert).
  for (const k of ['LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES', 'PM2RS_EXEC_MODE']) delete env[k];

  // The daemon listens with this backlog (cluster::listeners::BACKLOG) so that connections queue
  // while an instance restarts; Node's listen() on a handed socket would set its default, 511.
  const DAEMON_BACKLOG = 4096;

  const send = (msg) => {
    if (typeof process.send === 'function' && process.connected) {
      try { process.send(msg); } catch (_) { /* the daemon went away */ }
    }
  };

  // Each instance is a worker of the daemon's cluster: the Node cluster tutorial pattern
  // (`if (cluster.isPrimary) fork() else listen()`) runs its worker branch directly. Node's own
  // listen()/bind() read the same flags to decide whether to ask a primary for the socket, so
  // they see the truth (this process is on its own) while they run: see `asPrimary`.
  const cluster = clusterMode || handed.size > 0 ? require('cluster') : undefined;
  if (cluster) {
    const instance = parseInt(env.PM2RS_INSTANCE || '0', 10);
    cluster.isPrimary = false;
    cluster.isMaster = false;
    cluster.isWorker = true;
    cluster.worker = { id: instance + 1, process, isConnected: () => true, isDead: () => false };
    const dgram = require('dgram');
    const bind = dgram.Socket.prototype.bind;
    dgram.Socket.prototype.bind = function pm2rsBind(...args) {
      return asPrimary(() => bind.apply(this, args));
    };
  }
  function asPrimary(f) {
    if (!cluster) return f();
    cluster.isPrimary = true;
    cluster.isMaster = true;
    try {
      return f();
    } finally {
      cluster.isPrimary = false;
      cluster.isMaster = false;
    }
  }

  const servers = new Set();
  let draining = false;

  function portOf(args) {
    const first = args[0];
    if (typeof first === 'number') return first;
    if (typeof first === 'string' && /^\d+$/.test(first)) return Number(first);
    if (first && typeof first === 'object' && !Array.isArray(first) && first.port !== undefined
        && first.fd === undefined && first.handle === undefined && first._handle === undefined) {
      return Number(first.port);
    }
    return undefined;
  }

  function hostOf(args) {
    const first = args[0];
    if (first && typeof first === 'object' && typeof first.host === 'string') return first.host;
    return typeof args[1] === 'string' ? args[1] : undefined;
  }

  // The app's own backlog (`listen({ port, backlog })`, or a number after the port, as Node reads
  // it), else the daemon's.
  function backlogOf(args) {
    const first = args[0];
    if (first && typeof first === 'object' && first.backlog !== undefined) return first.backlog;
    const n = [args[1], args[2]].find((a) => typeof a === 'number');
    return n === undefined ? DAEMON_BACKLOG : n;
  }

  // Socket requests to the daemon waiting for their answer, by port.
  const waiting = new Map();
  function onAnswer(msg, handle) {
    if (!msg || typeof msg !== 'object' || !waiting.has(msg.port)) return;
    if (msg.pm2rs !== 'socket' && msg.pm2rs !== 'socket-error') return;
    const callbacks = waiting.get(msg.port);
    waiting.delete(msg.port);
    if (waiting.size === 0) process.removeListener('message', onAnswer);
    callbacks.forEach((cb, i) => {
      if (msg.pm2rs === 'socket' && handle && i === 0) return cb(null, handle);
      const err = new Error(`listen EADDRINUSE: ${msg.message || 'address already in use'} :::${msg.port}`);
      err.code = 'EADDRINUSE';
      err.syscall = 'listen';
      err.port = msg.port;
      cb(err);
    });
  }
  function requestSocket(port, host, cb) {
    if (!waiting.has(port)) {
      if (waiting.size === 0) process.on('message', onAnswer);
      waiting.set(port, []);
      send({ pm2rs: 'listen', port, host });
    }
    waiting.get(port).push(cb);
  }

  const listen = net.Server.prototype.listen;
  net.Server.prototype.listen = function pm2rsListen(...args) {
    const port = portOf(args);
    const fd = port === undefined ? undefined : handed.get(port);
    servers.add(this);
    this.once('listening', () => send({ pm2rs: 'listening', port }));
    this.once('close', () => servers.delete(this));
    if (fd === undefined && clusterMode && port > 0 && typeof process.send === 'function') {
      // A port the config does not declare: the daemon binds it once for all instances.
      const cb = args.find((a) => typeof a === 'function');
      if (cb) this.once('listening', cb);
      requestSocket(port, hostOf(args), (err, handle) => {
        if (err) return this.emit('error', err);
        asPrimary(() => listen.call(this, handle, backlogOf(args)));
      });
      return this;
    }
    if (fd === undefined) return asPrimary(() => listen.apply(this, args));
    const cb = args.find((a) => typeof a === 'function');
    // Node takes the backlog of an `{ fd }` listen from its second argument only.
    const backlog = backlogOf(args);
    return asPrimary(() => (cb ? listen.call(this, { fd }, backlog, cb) : listen.call(this, { fd }, backlog)));
  };

  // While draining, every response still to be started says `Connection: close`, so keep-alive
  // clients reconnect (to a new instance) instead of hitting a closed connection. writeHead is
  // where a response's headers are fixed (res.end() without it goes through it too); the
  // class is shared by http and https.
  const { ServerResponse } = require('http');
  const writeHead = ServerResponse.prototype.writeHead;
  ServerResponse.prototype.writeHead = function pm2rsWriteHead(...args) {
    if (draining && !this.headersSent) this.setHeader('Connection', 'close');
    return writeHead.apply(this, args);
  };

  function drain(signal) {
    if (draining) return;
    draining = true;
    let left = servers.size;
    const done = () => {
      process.removeListener(signal, onSignal);
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    if (left === 0) return done();
    // Stop accepting but keep idle keep-alive connections: their next request is answered with
    // `Connection: close` (closing them now would race a request already on its way).
    for (const server of servers) {
      net.Server.prototype.close.call(server, () => { if (--left === 0) done(); });
    }
    // Shortly before the daemon's kill timeout, close connections that stayed idle.
    const grace = Math.max(100, Math.floor(parseInt(env.PM2RS_KILL_TIMEOUT_MS || '1600', 10) * 0.8));
    setTimeout(() => {
      for (const server of servers) {
        if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
      }
    }, grace).unref();
  }

  const stopSignal = env.PM2RS_KILL_SIGNAL || 'SIGINT';
  function onSignal() {
    // An app with its own handler decides when to exit; we only stop accepting and close
    // keep-alive connections politely.
    drain(stopSignal);
  }
  try { process.on(stopSignal, onSignal); } catch (_) { /* not a catchable signal */ }
})();
