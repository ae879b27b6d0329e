//! Retention of the execution logs that dopi and dopv runs write (`<log_dir>/<plan>/<id>/`):
//! [`prune`] removes a plan's old ones by count ([`Retention::keep_per_plan`], the newest are
//! kept) and by age ([`Retention::older_than`], by the newest file in the directory); a
//! directory goes when either limit says so.
//!
//! What is removed is gone, so what counts as an execution log is narrow, and everything else in
//! the tree is left alone: a directory (not a symbolic link) directly under `<log_dir>/<plan>/`,
//! `<plan>` a valid plan name, that holds an `events.jsonl` or `all.log` file, and whose name does
//! not start with `dopc-`. Those are dopc's executions' logs: dopc removes them with its
//! executions, and its list of executions would point at missing logs otherwise.
//!
//! A plan whose run lock is held (the caller says so, through `running`) is skipped as a whole:
//! the run writing its log there may not be the newest directory by name (a clock set back), and
//! one pass more later costs nothing. The lock is asked after the directories are listed, so a
//! run that starts meanwhile writes a directory this pass never saw.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use dop_core::time::{from_compact_utc, rfc3339};

/// The name prefix of dopc's execution log directories (`dopc-<N>`), which are never pruned.
pub const DOPC_PREFIX: &str = "dopc-";

/// How many execution logs of a plan to keep. At least one limit must be set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest N execution logs of each plan (newest by the time in the directory's
    /// name, else by its newest file). At least 1: a dopv `--noop` preview takes no run lock, and
    /// the newest directory may be the one it is writing.
    pub keep_per_plan: Option<usize>,
    /// Remove the execution logs whose newest file was last written longer ago than this.
    pub older_than: Option<Duration>,
}

impl Retention {
    /// Refuses a policy without a limit, or one that keeps no log at all.
    pub fn check(&self) -> Result<(), PruneError> {
        match (self.keep_per_plan, self.older_than) {
            (None, None) => Err(PruneError::NoLimit),
            (Some(0), _) => Err(PruneError::KeepNone),
            _ => Ok(()),
        }
    }

    /// Whether the item at `rank` (0 = the newest) of its plan goes, and why; `age` is how
    /// long ago it was last written (none: not known, or in the future). Either limit removes.
    /// dopc's execution history uses the same verdict.
    pub fn verdict(&self, rank: usize, age: Option<Duration>) -> Option<Why> {
        if self.keep_per_plan.is_some_and(|keep| rank >= keep) {
            return Some(Why::BeyondKeep);
        }
        let old = |limit: Duration| age.is_some_and(|age| age > limit);
        self.older_than.is_some_and(old).then_some(Why::OlderThan)
    }
}

/// Why [`prune`] refused or stopped before it removed anything.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// Neither limit of the [`Retention`] is set.
    #[error("no limit given: keep the newest N execution logs per plan, remove those older than a time, or both")]
    NoLimit,
    /// [`Retention::keep_per_plan`] is 0.
    #[error("keeping no execution log at all would remove the log a preview may be writing; keep at least 1")]
    KeepNone,
    /// The plan asked for is not a valid plan name (so it cannot name a directory of the tree).
    #[error("{0}")]
    BadPlan(String),
    /// A directory of the tree could not be read; nothing was removed.
    #[error("cannot read {}: {source}; nothing was removed", path.display())]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why an execution log is (or would be) removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// It is not among the newest [`Retention::keep_per_plan`] of its plan.
    BeyondKeep,
    /// Its newest file is older than [`Retention::older_than`].
    OlderThan,
}

/// One execution log that was (or, in a dry run, would be) removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemovedLog {
    /// The execution id (the directory's name).
    pub id: String,
    /// The directory.
    pub dir: PathBuf,
    /// The bytes of its files.
    pub bytes: u64,
    /// When its newest file was last written (RFC 3339).
    pub last_written: String,
    /// Why it goes.
    pub why: Why,
}

/// An execution log that could not be removed (or only in part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedRemoval {
    /// The execution id.
    pub id: String,
    /// The directory.
    pub dir: PathBuf,
    /// The error.
    pub error: String,
}

/// What [`prune`] did to one plan's execution logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlanPruned {
    /// The plan (its directory's name).
    pub plan: String,
    /// The execution logs removed, newest first (in a dry run: that would be removed).
    pub removed: Vec<RemovedLog>,
    /// The bytes of the removed logs.
    pub bytes: u64,
    /// How many of the plan's execution logs stay (dopc's and other directories not counted).
    pub kept: usize,
    /// Set when the plan was skipped because its run lock is held: by whom.
    pub skipped_running: Option<String>,
    /// The logs whose removal failed.
    pub failed: Vec<FailedRemoval>,
}

/// What [`prune`] did, per plan that has execution logs, by plan name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// True when nothing was removed on purpose: `removed` says what would be.
    pub dry_run: bool,
    /// The plans with at least one execution log, by name.
    pub plans: Vec<PlanPruned>,
}

impl PruneReport {
    /// How many execution logs were (or would be) removed.
    pub fn removed(&self) -> usize {
        self.plans.iter().map(|p| p.removed.len()).sum()
    }

    /// The bytes they held.
    pub fn bytes(&self) -> u64 {
        self.plans.iter().map(|p| p.bytes).sum()
    }

    /// True when a removal failed.
    pub fn failed(&self) -> bool {
        self.plans.iter().any(|p| !p.failed.is_empty())
    }
}

/// An execution log found by the scan.
struct Found {
    id: String,
    dir: PathBuf,
    /// Time for ordering: from the name, else the newest file.
    time_ms: u64,
    newest: SystemTime,
    bytes: u64,
}

/// Removes the execution logs of `plan` (or of every plan) under `log_dir` that `policy` lets go;
/// with `dry_run`, only says which. `running` says whether a plan's run lock is held, and by
/// whom: such a plan is skipped. A missing `log_dir` or plan directory has nothing to remove.
///
/// Every plan is scanned before anything is removed, so an unreadable directory stops the prune
/// with nothing removed; a removal that fails is reported in the plan's `failed` and the others
/// go on.
pub fn prune(
    log_dir: &Path,
    policy: &Retention,
    plan: Option<&str>,
    running: &dyn Fn(&str) -> Option<String>,
    dry_run: bool,
) -> Result<PruneReport, PruneError> {
    policy.check()?;
    if let Some(name) = plan {
        dop_core::check_plan_name(name).map_err(PruneError::BadPlan)?;
    }
    let plans = match plan {
        Some(name) => vec![name.to_string()],
        None => plan_dirs(log_dir)?,
    };
    let mut scanned = Vec::new();
    for name in plans {
        let mut found = execution_logs(&log_dir.join(&name))?;
        if !found.is_empty() {
            // Newest first; equal times (two runs in one second) by their files, then by name.
            found.sort_by(|a, b| (b.time_ms, b.newest, &b.id).cmp(&(a.time_ms, a.newest, &a.id)));
            scanned.push((name, found));
        }
    }
    let now = SystemTime::now();
    let mut report = PruneReport {
        dry_run,
        plans: Vec::new(),
    };
    for (name, found) in scanned {
        let mut pruned = PlanPruned {
            plan: name.clone(),
            ..PlanPruned::default()
        };
        if let Some(holder) = running(&name) {
            pruned.kept = found.len();
            pruned.skipped_running = Some(holder);
            report.plans.push(pruned);
            continue;
        }
        for (rank, log) in found.into_iter().enumerate() {
            let Some(why) = policy.verdict(rank, now.duration_since(log.newest).ok()) else {
                pruned.kept += 1;
                continue;
            };
            if !dry_run {
                if let Err(e) = std::fs::remove_dir_all(&log.dir) {
                    pruned.failed.push(FailedRemoval {
                        id: log.id,
                        dir: log.dir,
                        error: e.to_string(),
                    });
                    continue;
                }
            }
            pruned.bytes += log.bytes;
            pruned.removed.push(RemovedLog {
                last_written: rfc3339(ms_since_epoch(log.newest)),
                id: log.id,
                dir: log.dir,
                bytes: log.bytes,
                why,
            });
        }
        report.plans.push(pruned);
    }
    Ok(report)
}

/// The plan directories under `log_dir`, by name: real directories with a valid plan name.
fn plan_dirs(log_dir: &Path) -> Result<Vec<String>, PruneError> {
    let mut names: Vec<String> = entries(log_dir)?
        .into_iter()
        .filter(|(_, ty)| ty.is_dir())
        .filter_map(|(path, _)| Some(path.file_name()?.to_str()?.to_string()))
        .filter(|name| dop_core::check_plan_name(name).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The execution logs in a plan's directory (see the module's doc for what counts).
fn execution_logs(plan_dir: &Path) -> Result<Vec<Found>, PruneError> {
    let mut found = Vec::new();
    for (dir, ty) in entries(plan_dir)? {
        let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if !ty.is_dir() || id.starts_with(DOPC_PREFIX) || !is_execution_log(&dir) {
            continue;
        }
        let Some((newest, bytes)) = measure(&dir)? else {
            continue; // Gone meanwhile.
        };
        found.push(Found {
            time_ms: time_of_id(&id).unwrap_or_else(|| ms_since_epoch(newest)),
            id,
            dir,
            newest,
            bytes,
        });
    }
    Ok(found)
}

/// A directory's entries and their types (symbolic links not followed); a missing directory has
/// none.
fn entries(dir: &Path) -> Result<Vec<(PathBuf, std::fs::FileType)>, PruneError> {
    let read = |source| PruneError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let list = match std::fs::read_dir(dir) {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read(e)),
    };
    let mut out = Vec::new();
    for entry in list {
        let entry = entry.map_err(read)?;
        out.push((entry.path(), entry.file_type().map_err(read)?));
    }
    Ok(out)
}

fn is_execution_log(dir: &Path) -> bool {
    ["events.jsonl", "all.log"].iter().any(|file| {
        std::fs::symlink_metadata(dir.join(file)).is_ok_and(|m| m.file_type().is_file())
    })
}

/// The newest modification time of the files under `dir` (the directory's own when it has none)
/// and their bytes; `None` when `dir` is gone. Symbolic links are counted, never followed.
fn measure(dir: &Path) -> Result<Option<(SystemTime, u64)>, PruneError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PruneError::Read { path, source }
    };
    let own = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta.modified().map_err(read(dir))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read(dir)(e)),
    };
    let (mut newest, mut bytes) = (None::<SystemTime>, 0);
    // A list, not recursion: a hostile tree cannot exhaust the stack.
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        let list = std::fs::read_dir(&next).map_err(read(&next))?;
        for entry in list {
            let entry = entry.map_err(read(&next))?;
            let meta = entry.metadata().map_err(read(&entry.path()))?;
            if meta.is_dir() {
                todo.push(entry.path());
                continue;
            }
            bytes += meta.len();
            let modified = meta.modified().map_err(read(&entry.path()))?;
            newest = Some(newest.map_or(modified, |n| n.max(modified)));
        }
    }
    Ok(Some((newest.unwrap_or(own), bytes)))
}

/// The time in an execution id as [`crate::logs::new_execution_id`] makes them
/// (`20261125T163000Z-4242`), in milliseconds since the epoch.
fn time_of_id(id: &str) -> Option<u64> {
    let head = id.get(..16)?;
    let b = head.as_bytes();
    if b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    from_compact_utc(&format!("{}{}", &head[..8], &head[9..15]))
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// An execution log directory with an `events.jsonl` of `size` bytes last written `age` ago.
    fn log(root: &Path, plan: &str, id: &str, age: Duration, size: usize) -> PathBuf {
        let dir = root.join(plan).join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("events.jsonl");
        std::fs::write(&file, "x".repeat(size)).unwrap();
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        dir
    }

    fn nobody_runs(_: &str) -> Option<String> {
        None
    }

    fn keep(n: usize) -> Retention {
        Retention {
            keep_per_plan: Some(n),
            older_than: None,
        }
    }

    fn left(root: &Path, plan: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join(plan))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn keeps_the_newest_n_per_plan_by_the_time_in_the_name() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        // Written in the opposite order of their names: the name's time wins over mtimes.
        log(root, "web", "20261125T163000Z-1", 3 * DAY, 10);
        log(root, "web", "20261126T090000Z-2", 2 * DAY, 20);
        log(root, "web", "20261127T120000Z-3", 4 * DAY, 30);
        log(root, "web", "20261127T120000Z-4", 5 * DAY, 40);
        log(root, "db", "20261101T000000Z-9", 9 * DAY, 5);
        let report = prune(root, &keep(2), None, &nobody_runs, false).unwrap();
        assert_eq!(
            left(root, "web"),
            ["20261127T120000Z-3", "20261127T120000Z-4"]
        );
        assert_eq!(left(root, "db"), ["20261101T000000Z-9"]);
        let web = &report.plans[1];
        assert_eq!(web.plan, "web");
        let removed: Vec<&str> = web.removed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(removed, ["20261126T090000Z-2", "20261125T163000Z-1"]);
        assert!(web.removed.iter().all(|r| r.why == Why::BeyondKeep));
        assert_eq!((web.bytes, web.kept), (30, 2));
        assert_eq!((report.removed(), report.bytes()), (2, 30));
        assert_eq!(report.plans[0].kept, 1);
    }

    #[test]
    fn names_without_a_time_are_ordered_by_their_newest_file() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        log(root, "web", "older", 2 * DAY, 1);
        log(root, "web", "newer", DAY, 1);
        prune(root, &keep(1), Some("web"), &nobody_runs, false).unwrap();
        assert_eq!(left(root, "web"), ["newer"]);
    }

    #[test]
    fn removes_what_is_older_than_the_cutoff_by_its_newest_file() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        log(root, "web", "20261101T000000Z-1", 40 * DAY, 1);
        let touched = log(root, "web", "20261102T000000Z-2", 40 * DAY, 1);
        // An old run whose node log was written recently (it ran for long): not old.
        std::fs::write(touched.join("web01.log"), "late line").unwrap();
        log(root, "web", "20261120T000000Z-3", 10 * DAY, 1);
        let policy = Retention {
            keep_per_plan: None,
            older_than: Some(30 * DAY),
        };
        let report = prune(root, &policy, None, &nobody_runs, false).unwrap();
        assert_eq!(
            left(root, "web"),
            ["20261102T000000Z-2", "20261120T000000Z-3"]
        );
        assert_eq!(report.plans[0].removed[0].why, Why::OlderThan);
        assert_eq!(report.plans[0].kept, 2);
    }

    #[test]
    fn either_limit_removes_when_both_are_given() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        log(root, "web", "20261101T000000Z-1", 40 * DAY, 1);
        log(root, "web", "20261102T000000Z-2", 2 * DAY, 1);
        log(root, "web", "20261103T000000Z-3", DAY, 1);
        let policy = Retention {
            keep_per_plan: Some(2),
            older_than: Some(30 * DAY),
        };
        prune(root, &policy, None, &nobody_runs, false).unwrap();
        assert_eq!(
            left(root, "web"),
            ["20261102T000000Z-2", "20261103T000000Z-3"]
        );
        // Old enough, but among the newest 2: the age limit alone removes the older one.
        let root2 = tempfile::tempdir().unwrap();
        log(root2.path(), "db", "20261101T000000Z-1", 40 * DAY, 1);
        log(root2.path(), "db", "20261102T000000Z-2", DAY, 1);
        prune(root2.path(), &policy, None, &nobody_runs, false).unwrap();
        assert_eq!(left(root2.path(), "db"), ["20261102T000000Z-2"]);
    }

    #[test]
    fn dopc_directories_are_never_touched_nor_counted() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        log(root, "web", "dopc-1", 90 * DAY, 100);
        log(root, "web", "dopc-2", 90 * DAY, 100);
        log(root, "web", "20261101T000000Z-1", 80 * DAY, 1);
        let policy = Retention {
            keep_per_plan: Some(1),
            older_than: Some(DAY),
        };
        let report = prune(root, &policy, None, &nobody_runs, false).unwrap();
        assert_eq!(left(root, "web"), ["dopc-1", "dopc-2"]);
        assert_eq!(report.plans[0].kept, 0);
        assert_eq!(report.removed(), 1);
    }

    #[test]
    fn what_is_not_an_execution_log_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        log(root, "web", "20261101T000000Z-1", 90 * DAY, 1);
        log(root, "web", "20261102T000000Z-2", 90 * DAY, 1);
        // A directory without events.jsonl or all.log, one whose events.jsonl is a directory,
        // a file beside the executions, a symbolic link to a log, a log one level too deep, and
        // a "plan" directory whose name no plan can have.
        let other = root.join("web/notes");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("readme.txt"), "mine").unwrap();
        std::fs::create_dir_all(root.join("web/odd/events.jsonl")).unwrap();
        std::fs::write(root.join("web/index.txt"), "mine").unwrap();
        let target = log(root, "elsewhere", "20261001T000000Z-7", 90 * DAY, 1);
        std::os::unix::fs::symlink(&target, root.join("web/20261003T000000Z-3")).unwrap();
        log(
            &root.join("web"),
            "nested",
            "20261004T000000Z-4",
            90 * DAY,
            1,
        );
        log(root, "not a plan", "20261005T000000Z-5", 90 * DAY, 1);
        let policy = Retention {
            keep_per_plan: Some(1),
            older_than: Some(DAY),
        };
        let report = prune(root, &policy, Some("web"), &nobody_runs, false).unwrap();
        assert_eq!(
            left(root, "web"),
            ["20261003T000000Z-3", "index.txt", "nested", "notes", "odd"]
        );
        assert_eq!(report.removed(), 2);
        assert!(target.join("events.jsonl").exists());
        assert!(root
            .join("web/nested/20261004T000000Z-4/events.jsonl")
            .exists());
        // All plans: "elsewhere" is a plan; "not a plan" is not.
        prune(root, &policy, None, &nobody_runs, false).unwrap();
        assert!(!target.exists());
        assert_eq!(left(root, "not a plan"), ["20261005T000000Z-5"]);
    }

    #[test]
    fn a_dry_run_removes_nothing_and_says_what_would_go() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        for (i, id) in [
            "20261101T000000Z-1",
            "20261102T000000Z-2",
            "20261103T000000Z-3",
        ]
        .iter()
        .enumerate()
        {
            log(root, "web", id, DAY * (3 - i as u32), 7);
        }
        let report = prune(root, &keep(1), None, &nobody_runs, true).unwrap();
        assert!(report.dry_run);
        assert_eq!(left(root, "web").len(), 3);
        assert_eq!((report.removed(), report.bytes()), (2, 14));
        assert_eq!(report.plans[0].kept, 1);
    }

    #[test]
    fn a_plan_whose_run_lock_is_held_is_skipped_whole() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        log(root, "web", "20261101T000000Z-1", 90 * DAY, 1);
        log(root, "web", "20261102T000000Z-2", 90 * DAY, 1);
        log(root, "db", "20261101T000000Z-1", 90 * DAY, 1);
        log(root, "db", "20261102T000000Z-2", 90 * DAY, 1);
        let web_runs = |plan: &str| (plan == "web").then(|| "'dopi run' (pid 1)".to_string());
        let report = prune(root, &keep(1), None, &web_runs, false).unwrap();
        assert_eq!(left(root, "web").len(), 2);
        assert_eq!(left(root, "db"), ["20261102T000000Z-2"]);
        let web = &report.plans[1];
        assert_eq!(web.skipped_running.as_deref(), Some("'dopi run' (pid 1)"));
        assert_eq!((web.removed.len(), web.kept), (0, 2));
    }

    #[test]
    fn refuses_a_policy_without_a_limit_a_zero_keep_and_a_bad_plan_name() {
        let root = tempfile::tempdir().unwrap();
        let none = Retention::default();
        assert!(matches!(
            prune(root.path(), &none, None, &nobody_runs, false),
            Err(PruneError::NoLimit)
        ));
        assert!(matches!(
            prune(root.path(), &keep(0), None, &nobody_runs, false),
            Err(PruneError::KeepNone)
        ));
        assert!(matches!(
            prune(root.path(), &keep(1), Some("../etc"), &nobody_runs, false),
            Err(PruneError::BadPlan(_))
        ));
    }

    #[test]
    fn a_missing_log_dir_or_plan_has_nothing_to_remove() {
        let root = tempfile::tempdir().unwrap();
        let gone = root.path().join("never-written");
        let report = prune(&gone, &keep(1), None, &nobody_runs, false).unwrap();
        assert_eq!(report, PruneReport::default());
        let report = prune(root.path(), &keep(1), Some("web"), &nobody_runs, false).unwrap();
        assert!(report.plans.is_empty());
    }

    #[test]
    fn execution_ids_carry_their_time() {
        let id = crate::logs::new_execution_id();
        let ms = time_of_id(&id).unwrap();
        assert!(dop_core::time::now_ms().abs_diff(ms) < 60_000, "{id}");
        assert_eq!(time_of_id("dopc-12"), None);
        assert_eq!(time_of_id("2026112XT163000Z-1"), None);
        assert_eq!(time_of_id("20261125T163000Zé"), Some(1_795_624_200_000));
    }
}
