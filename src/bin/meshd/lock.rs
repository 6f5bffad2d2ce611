//! `meshd lock NAME -- CMD` and its watchdog: the flags are the library's
//! (`coordmesh::harness::lock_command`), and so is the program.

use std::process::ExitCode;

pub(crate) use coordmesh::harness::lock_command::{LockOptions as LockArgs, watchdog};

pub(crate) fn run(args: LockArgs) -> ExitCode {
    match std::env::current_exe() {
        Ok(meshd) => coordmesh::harness::lock_command::run(&meshd, args),
        Err(err) => {
            eprintln!("meshd lock: cannot find my own binary: {err}");
            ExitCode::from(1)
        }
    }
}
