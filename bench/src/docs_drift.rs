//! The benchmark's command line against the documentation: every flag
//! clap knows is on the usage lines of README.md or docs/OPERATIONS.md,
//! read by the same check as the worker's (`session_guard::cli::synopsis`).

use clap::CommandFactory as _;

use crate::options::BenchArgs;

#[test]
fn every_flag_is_in_a_command_list() {
    let read = |relative: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(relative);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let missing = session_guard::cli::synopsis::undocumented(
        &BenchArgs::command(),
        &[&read("README.md"), &read("docs/OPERATIONS.md")],
    );
    assert!(
        missing.is_empty(),
        "not in the usage lines of README.md or docs/OPERATIONS.md: {missing:#?}"
    );
}
