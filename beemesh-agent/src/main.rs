//! `beemesh-agent`: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use beemesh_agent::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A pod's init forks and clones: it must run while this process has a single thread.
    match &cli.command {
        Command::PodInit { dir, hostname, id_base } => {
            return ExitCode::from(beemesh_agent::pod::init::main(dir, hostname, *id_base) as u8);
        }
        Command::PodExec { target, uid, gid, cwd, cgroups, security, command } => {
            let security = match security.as_deref().map(serde_json::from_str).transpose() {
                Ok(s) => s.unwrap_or_default(),
                Err(e) => {
                    eprintln!("beemesh pod-exec: --security: {e}");
                    return ExitCode::from(126);
                }
            };
            let code =
                beemesh_agent::pod::init::exec_main(*target, *uid, *gid, cwd, cgroups, &security, command);
            return ExitCode::from(code as u8);
        }
        Command::CgroupExec { cgroups, slave_mounts, command } => {
            let e = beemesh_agent::sys::cgroup_exec(cgroups, *slave_mounts, command);
            eprintln!("beemesh cgroup-exec: {e}");
            return ExitCode::from(127);
        }
        _ => {}
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.global.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("beemesh-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(beemesh_agent::cli::execute(cli))
}
