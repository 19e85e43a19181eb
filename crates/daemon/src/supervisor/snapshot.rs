//! What the supervisor shows the rest of the daemon: the [`Snapshot`] it publishes after every
//! step that changed something, the resolution of a user's target (`all`, an id, a name, a
//! namespace), and the outbox of replies, sent only once the snapshot they describe is published.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use pm2rs_proto::{ApiError, AppSpec, DescribeResponse, Described, ErrorKind, ProcessInfo};

use super::{Instance, Reply, Supervisor, log_paths};

/// What the supervisor publishes after every change. Cheap to clone (behind an `Arc`).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every instance, ordered by id (cpu/memory are filled in by the API from the sampler).
    pub processes: Vec<ProcessInfo>,
    /// Every app's spec, by name.
    pub specs: BTreeMap<String, Arc<AppSpec>>,
    /// Log file paths by instance id: (stdout, stderr).
    pub logs: BTreeMap<u32, (PathBuf, PathBuf)>,
    /// What the user should know (a bad dump set aside, a dump that cannot be written).
    pub warnings: Vec<String>,
    /// The next cron restart of each app whose cron is on (Unix microseconds), by name.
    pub cron_next_us: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Describes the instances matching `target`.
    pub fn describe(&self, target: &str) -> Result<DescribeResponse, ApiError> {
        let ids = resolve_target(
            target,
            self.processes
                .iter()
                .map(|p| (p.id, &*p.name, &*p.namespace)),
        )?;
        let mut out = Vec::with_capacity(ids.len());
        for p in self.processes.iter().filter(|p| ids.contains(&p.id)) {
            let (Some(spec), Some((out_log, err_log))) =
                (self.specs.get(&p.name), self.logs.get(&p.id))
            else {
                continue;
            };
            out.push(Described {
                process: p.clone(),
                spec: (**spec).clone(),
                out_log: out_log.clone(),
                err_log: err_log.clone(),
                combined_log: None,
                log_problems: Vec::new(),
                log_rotation: None,
                cron_next_us: self.cron_next_us.get(&p.name).copied(),
            });
        }
        Ok(DescribeResponse {
            processes: out,
            warnings: self.warnings.clone(),
        })
    }
}

/// Resolves a user-typed target against `(id, name, namespace)` triples: `all`, an id, an app name,
/// or a namespace, in that order of precedence.
pub fn resolve_target<'a>(
    target: &str,
    procs: impl Iterator<Item = (u32, &'a str, &'a str)> + Clone,
) -> Result<Vec<u32>, ApiError> {
    let target = target.trim();
    if target.is_empty() {
        return Err(api_error(
            ErrorKind::BadRequest,
            "empty target: name an app, an id, a namespace or `all`",
        ));
    }
    let ids: Vec<u32> = if target == "all" {
        procs.map(|(id, _, _)| id).collect()
    } else if let Ok(id) = target.parse::<u32>() {
        procs
            .filter(|(i, _, _)| *i == id)
            .map(|(id, _, _)| id)
            .collect()
    } else {
        let by_name: Vec<u32> = procs
            .clone()
            .filter(|(_, n, _)| *n == target)
            .map(|(id, _, _)| id)
            .collect();
        if by_name.is_empty() {
            procs
                .filter(|(_, _, ns)| *ns == target)
                .map(|(id, _, _)| id)
                .collect()
        } else {
            by_name
        }
    };
    if ids.is_empty() && target != "all" {
        return Err(api_error(
            ErrorKind::NotFound,
            &format!("no app, id or namespace matches `{target}`; see `pm2rs list`"),
        ));
    }
    Ok(ids)
}

/// Resolves several targets at once: the union of what each matches, in the order first met,
/// each id once. A target that matches nothing fails the whole lot, the error naming every such
/// target, so that `stop a typo c` does nothing rather than part of what was asked.
pub fn resolve_targets<'a>(
    targets: &[String],
    procs: impl Iterator<Item = (u32, &'a str, &'a str)> + Clone,
) -> Result<Vec<u32>, ApiError> {
    if targets.is_empty() {
        return Err(api_error(
            ErrorKind::BadRequest,
            "no target: name an app, an id, a namespace or `all`",
        ));
    }
    let mut ids = Vec::new();
    let mut unknown = Vec::new();
    for target in targets {
        match resolve_target(target, procs.clone()) {
            Ok(found) => {
                for id in found {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            Err(e) if e.kind == ErrorKind::NotFound => unknown.push(format!("`{}`", target.trim())),
            Err(e) => return Err(e),
        }
    }
    if unknown.is_empty() {
        return Ok(ids);
    }
    let message = if targets.len() == 1 {
        format!(
            "no app, id or namespace matches {}; see `pm2rs list`",
            unknown[0]
        )
    } else {
        format!(
            "no app, id or namespace matches {}; nothing was done (see `pm2rs list`)",
            unknown.join(", ")
        )
    };
    Err(api_error(ErrorKind::NotFound, &message))
}

pub(super) fn api_error(kind: ErrorKind, message: &str) -> ApiError {
    ApiError {
        kind,
        message: message.to_string(),
    }
}

/// One queued reply; called with the dump's write error, if the write it waited for failed.
type Send_ = Box<dyn FnOnce(Option<&str>) + Send>;

/// Replies waiting for the end of the step (at most the replies of one step), and replies of
/// earlier steps held until the dump generation they wait for is written (one entry per
/// generation, each reply a client still waits for).
#[derive(Default)]
pub(super) struct Outbox {
    sends: Vec<Send_>,
    held: Vec<(u64, Vec<Send_>)>,
}

impl Outbox {
    /// Queues `result` for `to` (a client that went away is fine).
    pub(super) fn reply<T: Send + 'static>(&mut self, to: Reply<T>, result: Result<T, ApiError>) {
        self.sends.push(Box::new(move |_| {
            let _ = to.send(result);
        }));
    }

    /// Queues `ok` for `to`, turned into an error if the dump write it waits for fails.
    pub(super) fn reply_when_written<T: Send + 'static>(&mut self, to: Reply<T>, ok: T) {
        self.sends.push(Box::new(move |error| {
            let result = match error {
                None => Ok(ok),
                Some(e) => Err(api_error(ErrorKind::Failed, e)),
            };
            let _ = to.send(result);
        }));
    }

    /// Sends every queued reply. Called after the snapshot is published.
    pub(super) fn flush(&mut self) {
        for send in self.sends.drain(..) {
            send(None);
        }
    }

    /// Keeps the step's replies until dump generation `generation` is written.
    pub(super) fn hold(&mut self, generation: u64) {
        if self.sends.is_empty() {
            return;
        }
        let sends = std::mem::take(&mut self.sends);
        match self.held.last_mut() {
            Some((g, held)) if *g == generation => held.extend(sends),
            _ => self.held.push((generation, sends)),
        }
    }

    /// Sends the held replies of every generation up to `generation` (written, or failed with
    /// `error`).
    pub(super) fn release(&mut self, generation: u64, error: Option<&str>) {
        let later = self.held.iter().position(|(g, _)| *g > generation);
        let done: Vec<_> = self
            .held
            .drain(..later.unwrap_or(self.held.len()))
            .collect();
        for send in done.into_iter().flat_map(|(_, sends)| sends) {
            send(error);
        }
    }

    /// Sends everything, held or not (the supervisor is ending).
    pub(super) fn release_all(&mut self) {
        self.release(u64::MAX, None);
        self.flush();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sends.len()
    }
}

impl Supervisor {
    /// Resolves `target` against the instances.
    pub(super) fn resolve(&self, target: &str) -> Result<Vec<u32>, ApiError> {
        resolve_target(target, self.triples())
    }

    /// Resolves several targets against the instances (see [`resolve_targets`]).
    pub(super) fn resolve_all(&self, targets: &[String]) -> Result<Vec<u32>, ApiError> {
        resolve_targets(targets, self.triples())
    }

    /// `(id, app, namespace)` of every instance, what targets are resolved against.
    fn triples(&self) -> impl Iterator<Item = (u32, &str, &str)> + Clone {
        self.instances.values().map(|p| {
            let ns = self
                .apps
                .get(&p.app)
                .map_or("default", |a| a.spec.namespace.as_str());
            (p.id, p.app.as_str(), ns)
        })
    }

    pub(super) fn info(&self, p: &Instance) -> ProcessInfo {
        let (namespace, exec_mode) = self
            .apps
            .get(&p.app)
            .map(|a| (a.spec.namespace.clone(), a.spec.exec_mode))
            .unwrap_or_default();
        ProcessInfo {
            id: p.id,
            name: p.app.clone(),
            namespace,
            instance: p.slot,
            exec_mode,
            pid: p.run.map(|r| r.tracked.pid.as_raw() as u32),
            status: p.status,
            restarts: p.restarts,
            unstable_restarts: p.history.unstable_restarts,
            started_at_us: p.run.map(|r| r.started_at_us),
            cpu_percent: None,
            memory_bytes: None,
            leader_cpu_percent: None,
            leader_memory_bytes: None,
            group_processes: None,
            restart_reason: p.restart_reason.clone(),
            user: self.user.clone(),
            reason: p.reason.clone(),
            last_exit: p.last_exit.clone(),
            notify_status: p.notify_status.clone(),
        }
    }

    pub(super) fn infos(&self, ids: &[u32]) -> Vec<ProcessInfo> {
        ids.iter()
            .filter_map(|id| self.instances.get(id))
            .map(|p| self.info(p))
            .collect()
    }

    pub(super) fn infos_of_apps(&self, names: &[String]) -> Vec<ProcessInfo> {
        self.instances
            .values()
            .filter(|p| names.contains(&p.app))
            .map(|p| self.info(p))
            .collect()
    }

    pub(super) fn publish(&mut self) {
        let snapshot = Snapshot {
            processes: self.instances.values().map(|p| self.info(p)).collect(),
            specs: self
                .apps
                .iter()
                .map(|(n, a)| (n.clone(), a.spec.clone()))
                .collect(),
            logs: self
                .instances
                .values()
                .map(|p| {
                    let paths = match self.apps.get(&p.app) {
                        Some(a) if p.out_log.as_os_str().is_empty() => {
                            log_paths(&self.logs_dir, &a.spec, p.id)
                        }
                        _ => (p.out_log.clone(), p.err_log.clone()),
                    };
                    (p.id, paths)
                })
                .collect(),
            warnings: self.durable.warnings(),
            cron_next_us: self.cron_next_us().collect(),
        };
        self.snapshot.send_replace(Arc::new(snapshot));
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triples() -> Vec<(u32, &'static str, &'static str)> {
        vec![
            (0, "api", "web"),
            (1, "api", "web"),
            (2, "worker", "jobs"),
            (3, "web", "other"),
        ]
    }

    #[test]
    fn targets_resolve_by_all_id_name_then_namespace() {
        let t = triples();
        assert_eq!(
            resolve_target("all", t.iter().copied()).unwrap(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(resolve_target("2", t.iter().copied()).unwrap(), vec![2]);
        assert_eq!(
            resolve_target("api", t.iter().copied()).unwrap(),
            vec![0, 1]
        );
        assert_eq!(resolve_target("jobs", t.iter().copied()).unwrap(), vec![2]);
        // A name wins over a namespace of the same name.
        assert_eq!(resolve_target("web", t.iter().copied()).unwrap(), vec![3]);
        let err = resolve_target("nope", t.iter().copied()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert_eq!(
            resolve_target(" ", t.iter().copied()).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn several_targets_resolve_to_their_union_or_fail_naming_each_unknown_one() {
        let t = triples();
        let targets = |ts: &[&str]| ts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resolve_targets(&targets(&["worker", "api", "1"]), t.iter().copied()).unwrap(),
            vec![2, 0, 1]
        );
        let err = resolve_targets(&targets(&["api", "nope", "9"]), t.iter().copied()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(
            err.message.contains("`nope`, `9`") && err.message.contains("nothing was done"),
            "{}",
            err.message
        );
        assert_eq!(
            resolve_targets(&[], t.iter().copied()).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }
}
