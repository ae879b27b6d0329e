//! How a caller stops a run: the levels dopi's signals escalate through, which dopc's cancel
//! uses too.

/// What a run is asked to do about its work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Carry on.
    #[default]
    No,
    /// Start nothing new; let running work finish (1st signal, or a cancel).
    Graceful,
    /// Terminate running commands' process groups (2nd signal, or a forceful cancel).
    Terminate,
    /// Kill them (3rd signal).
    Kill,
}
