//! The process's open files, which bound how many connections a run may keep.
//!
//! A run over thousands of nodes holds a socket per open connection, and the soft limit of open
//! files is often 1024 while the hard one is far higher: the soft limit is raised to the hard one
//! once (as Go's runtime and many servers do), and the connections may take a third of it, the
//! rest staying for logs, the store and the commands' pipes.

use std::sync::OnceLock;

use super::DEFAULT_MAX_CONNECTIONS;

/// The open files this process may have, after raising the soft limit to the hard one.
pub fn open_files() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return 1024;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                }
            }
        }
        limit.rlim_cur
    })
}

/// How many node connections a run keeps open at once: `asked` (or the default), and never
/// more than a third of the open files (at least one).
pub fn max_connections(asked: Option<usize>) -> usize {
    let by_files = usize::try_from(open_files() / 3).unwrap_or(usize::MAX);
    asked
        .unwrap_or(DEFAULT_MAX_CONNECTIONS)
        .min(by_files)
        .max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn connections_stay_within_the_open_files() {
        let files = super::open_files();
        assert!(files >= 3);
        let most = usize::try_from(files / 3).unwrap();
        assert_eq!(super::max_connections(Some(usize::MAX)), most);
        assert_eq!(super::max_connections(Some(0)), 1);
        assert_eq!(super::max_connections(Some(2)), 2);
    }
}
