//! The process exit codes of `stagegate`, in one place.
//!
//! A CI stage gates on these numbers, so each one keeps its meaning forever: a code is
//! never reused for something else. `main` is the only caller that turns an outcome into
//! one of them.

/// Every criterion held in every stage: the candidate may be promoted.
pub const PROMOTE: i32 = 0;
/// At least one enforced criterion failed: roll the candidate back.
pub const ROLLBACK: i32 = 1;
/// The scenario, a data schema or the command line is invalid; nothing was run.
pub const INVALID_INPUT: i32 = 2;
/// Too few samples to judge, or a comparison without enough evidence.
pub const INCONCLUSIVE: i32 = 3;
/// The run itself broke: the system under test never became ready, a dependency could
/// not start, a port could not be bound. Not a judgement on the candidate.
pub const RUN_BROKEN: i32 = 4;
/// The run was interrupted (Ctrl-C or SIGTERM) before it could reach a verdict. Faults
/// were removed and a partial report was written. 128 + SIGINT, as shells expect.
pub const INTERRUPTED: i32 = 130;
