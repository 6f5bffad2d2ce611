//! `meshd keygen`: a new cluster secret, printed or written to a new file
//! with mode 0600.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use coordmesh::ClusterSecret;

/// Flags of `meshd keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Write the secret to this new file (mode 0600) instead of stdout.
    /// An existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: KeygenArgs) -> ExitCode {
    let result = ClusterSecret::generate().and_then(|secret| match &args.out {
        Some(path) => secret.write_new(path),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(secret.to_hex().as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|source| coordmesh::secret::SecretError::Write {
                    path: PathBuf::from("<stdout>"),
                    source,
                })
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshd: {err}");
            ExitCode::from(1)
        }
    }
}
