//! `dopc validate` is the shared implementation: same output and exit codes as `dopi validate`.

#[test]
fn validate_accepts_a_valid_plan_and_refuses_an_invalid_one() {
    dop_testbed::cli::check_validate(env!("CARGO_BIN_EXE_dopc"));
}
