//! `meshd demo`: the flags and the program are the library's
//! (`coordmesh::harness::demo`); it starts this binary's agents.

use std::process::ExitCode;

pub(crate) use coordmesh::harness::demo::DemoOptions as DemoArgs;

pub(crate) fn run(args: DemoArgs) -> ExitCode {
    match std::env::current_exe() {
        Ok(meshd) => coordmesh::harness::demo::run(&meshd, args),
        Err(err) => {
            eprintln!("meshd demo: cannot find my own binary: {err}");
            ExitCode::from(1)
        }
    }
}
