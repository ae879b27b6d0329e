//! The dop plan store (to come: plan iterations, diffs, tool state and locks on sled).
