//! The control protocol between the agent and a pod's init process (`pod::init`): JSON lines
//! over the pod's `init.sock`. The agent sends commands; init answers with events. On every
//! connection init first replays the state of every container it knows, so an agent that
//! restarted learns what ran and what exited while it was away.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest line either side accepts; a longer one closes the connection.
pub const MAX_LINE: usize = 1 << 20;

/// Everything pod init needs to start one container; built by the agent (`pod::spec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    /// Which start of this container this is (counts from 1): events carry it back, so an
    /// exit of an earlier run is never taken for the current one.
    pub run: u64,
    /// Program and arguments; `argv[0]` is looked up in the container's `PATH`.
    pub argv: Vec<String>,
    /// `NAME=value` entries, in order (later entries win, as in Kubernetes).
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing).
    pub cwd: String,
    /// The container's root filesystem, already mounted by the agent.
    pub rootfs: PathBuf,
    /// Bind mounts, applied in order after /proc, /sys and /dev.
    pub mounts: Vec<BindMount>,
    /// cgroup directories (cgroup v1 memory, cpu, pids) the container joins before exec.
    pub cgroups: Vec<PathBuf>,
    /// The container's own cgroup2 directory (under the pod's): joined before exec, and
    /// killed whole (`cgroup.kill`) when the container's main process ends, so nothing it
    /// started outlives it.
    #[serde(default)]
    pub cgroup2: Option<PathBuf>,
    /// File that receives the container's stdout and stderr.
    pub log: PathBuf,
    /// Stay in the pod's pid namespace (`shareProcessNamespace: true`) instead of getting
    /// one of its own.
    #[serde(default)]
    pub share_process_namespace: bool,
    /// `stdin: true`: the container reads a pipe that init holds open (no end of input until
    /// the agent closes it), written through by `attach`. Without it stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// `tty: true`: stdin, stdout and stderr are a terminal (its controlling one); init copies
    /// what the container writes to it into `log` and holds the other end for `attach`.
    #[serde(default)]
    pub tty: bool,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, capabilities, no_new_privs, seccomp (`pod::security`).
    #[serde(default)]
    pub security: SecuritySpec,
}

/// How a container process is confined, applied by pod init before exec and by `pod-exec`
/// for every process entering the container (built by `pod::security::spec_for`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecuritySpec {
    /// The capability bounding set (what root in the container holds); `None`: every
    /// capability (privileged).
    pub capabilities: Option<Vec<u32>>,
    /// Supplementary groups besides the primary one.
    #[serde(default)]
    pub groups: Vec<u32>,
    #[serde(default)]
    pub no_new_privs: bool,
    /// The root filesystem is mounted read-only (volumes keep their own mode).
    #[serde(default)]
    pub read_only_root: bool,
    /// /proc and /sys are neither masked nor read-only.
    #[serde(default)]
    pub privileged: bool,
    /// Installed last, right before exec; `None`: unconfined.
    #[serde(default)]
    pub seccomp: Option<super::seccomp::Profile>,
}

/// What containers got before security contexts existed: Docker's default capabilities only.
impl Default for SecuritySpec {
    fn default() -> Self {
        Self {
            capabilities: Some(crate::sys::process::CONTAINER_CAPS.to_vec()),
            groups: Vec::new(),
            no_new_privs: false,
            read_only_root: false,
            privileged: false,
            seccomp: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindMount {
    /// Host path (a directory or a file); with `from_fd`, only shown in messages.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    /// A path inside `source` to mount instead (Kubernetes `subPath`), resolved by init
    /// right before the mount with every link kept inside `source`.
    #[serde(default)]
    pub sub_path: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    /// The agent sends the mount itself: a detached mount it made from a descriptor it opened
    /// and checked (a hostPath volume, its subPath applied, `nosuid,nodev`, read-only if
    /// asked), attached to the `start` line (SCM_RIGHTS), one per such mount, in order.
    #[serde(default)]
    pub from_fd: bool,
}

/// A command on its way to init, with the descriptors that go with it (the mounts of a
/// `start`'s `from_fd` bind mounts, in order).
#[derive(Debug)]
pub struct Message {
    pub command: Command,
    pub fds: Vec<std::os::fd::OwnedFd>,
}

impl From<Command> for Message {
    fn from(command: Command) -> Self {
        Self { command, fds: Vec::new() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Command {
    Start(Box<ContainerSpec>),
    /// Sends `signal` to the container's process (its whole process group).
    Signal {
        name: String,
        signal: i32,
    },
    /// Ends the container's input (`stdinOnce: true` after the first attach): init closes its
    /// end of the stdin pipe (the container reads end of input once no copy is left), or, for
    /// a terminal, types the end-of-file character (^D) into it.
    CloseInput {
        name: String,
    },
    /// Kills every container and exits; the kernel then tears the pod's namespaces down.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
// A few events per container start and exit: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// The container's program was executed (`pid` as seen from the host), as `uid`/`gid`,
    /// in `cgroups` (v1 groups and its cgroup2 leaf): what an agent adopting it needs.
    Started {
        name: String,
        run: u64,
        pid: u32,
        host_pid: u32,
        #[serde(default)]
        uid: u32,
        #[serde(default)]
        gid: u32,
        #[serde(default)]
        cgroups: Vec<PathBuf>,
        /// What it was confined with; `pod-exec` applies the same to processes entering it.
        #[serde(default)]
        security: Option<SecuritySpec>,
        /// Init's descriptor of the container's input (the stdin pipe's write end, or the
        /// terminal's master side) while it takes input: the agent copies it out of init
        /// (`pidfd_getfd`) to write what `attach` sends.
        #[serde(default)]
        input_fd: Option<i32>,
    },
    /// It ended: `code` is the exit status, or 128 + the signal number (`signal` set).
    Exited { name: String, run: u64, code: i32, signal: Option<i32> },
    /// Setting the container up failed before its program ran.
    StartFailed { name: String, run: u64, message: String },
    /// Sent after the replay that opens every connection: the agent has heard everything.
    Replayed,
}

impl Event {
    pub fn container(&self) -> &str {
        match self {
            Event::Started { name, .. } | Event::Exited { name, .. } | Event::StartFailed { name, .. } => {
                name
            }
            Event::Replayed => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_json_lines() {
        let start = Command::Start(Box::new(ContainerSpec {
            name: "web".into(),
            run: 2,
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            ..Default::default()
        }));
        let line = serde_json::to_string(&start).expect("serializable");
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Command>(&line).expect("parses"), start);
        let exited = Event::Exited { name: "web".into(), run: 2, code: 137, signal: Some(9) };
        let line = serde_json::to_string(&exited).expect("serializable");
        assert_eq!(serde_json::from_str::<Event>(&line).expect("parses"), exited);
        assert_eq!(exited.container(), "web");
    }
}
