//! Seccomp profiles for containers: the OCI/Docker seccomp JSON that Kubernetes `Localhost`
//! profiles use, parsed with serde (`parse`), and compiled for this machine's architecture,
//! the container's capabilities and the running kernel (`compile`) into BPF programs with
//! rust-vmm's `seccompiler`. The `RuntimeDefault` profile is data embedded in the binary
//! (`seccomp/runtime-default.json`, Docker's default semantics). The agent parses profiles at
//! apply and start; pod init and `pod-exec` compile them before they fork (both are
//! single-threaded) and install them last, right before exec (`install`).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use serde::{Deserialize, Serialize};

/// The `RuntimeDefault` profile, as shipped.
pub const RUNTIME_DEFAULT: &str = include_str!("seccomp/runtime-default.json");

/// EPERM: what a denied syscall returns when the profile names no errno.
const EPERM: u32 = 1;

/// `__X32_SYSCALL_BIT`: x86-64 x32 syscalls carry it in their number (with the x86-64 audit
/// arch), so an exact-number rule never matches them. No real syscall number of any
/// architecture reaches it.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// seccompiler's programs open with the architecture check (load arch, jump if equal,
/// kill): the x32 guard goes right after it.
const ARCH_CHECK_LEN: usize = 3;

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile {source_name}: {error}")]
    Parse {
        source_name: String,
        #[source]
        error: serde_json::Error,
    },
    #[error("seccomp profile {source_name}: {reason}")]
    Invalid { source_name: String, reason: String },
    #[error("cannot read seccomp profile {path}: {error}")]
    Read {
        path: String,
        #[source]
        error: std::io::Error,
    },
    #[error("seccomp filters are not supported on {0}")]
    Arch(String),
    #[error("compile seccomp filter: {0}")]
    Compile(String),
    #[error("install seccomp filter: {0}")]
    Install(String),
}

/// What a rule (or the default) does with a syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    #[serde(rename = "SCMP_ACT_KILL", alias = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
}

/// A comparison of one syscall argument (libseccomp's `SCMP_CMP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    /// `(arg & value) == valueTwo`.
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Arg {
    pub index: u8,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: Op,
}

/// When a rule applies: every listed criterion must hold (`includes`), or none (`excludes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    /// Go architecture names (`amd64`, `arm64`, `riscv64`...).
    #[serde(default)]
    pub arches: Option<Vec<String>>,
    /// Capability names (`CAP_SYS_ADMIN`).
    #[serde(default)]
    pub caps: Option<Vec<String>>,
    /// `major.minor`.
    #[serde(default)]
    pub min_kernel: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// The old single-name form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Option<Vec<Arg>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub includes: Option<Filter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excludes: Option<Filter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<serde_json::Value>,
}

/// A seccomp profile in the OCI/Docker JSON format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    pub default_action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Informational: filters are compiled for the running architecture only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch_map: Option<serde_json::Value>,
    #[serde(default)]
    pub syscalls: Option<Vec<Rule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<serde_json::Value>,
}

/// What a profile is compiled for: the container's capability set (bounding set numbers)
/// and the running kernel's `(major, minor)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub caps: BTreeSet<u32>,
    pub kernel: (u32, u32),
}

/// Parses and checks a profile; `source_name` names it in errors (a file, `RuntimeDefault`).
pub fn parse(text: &str, source_name: &str) -> Result<Profile, SeccompError> {
    let profile: Profile = serde_json::from_str(text)
        .map_err(|error| SeccompError::Parse { source_name: source_name.to_owned(), error })?;
    let invalid = |reason: String| SeccompError::Invalid { source_name: source_name.to_owned(), reason };
    for (i, rule) in profile.syscalls.iter().flatten().enumerate() {
        if rule.names.as_ref().is_none_or(Vec::is_empty) && rule.name.is_none() {
            return Err(invalid(format!("syscalls[{i}]: no names")));
        }
        for (j, arg) in rule.args.iter().flatten().enumerate() {
            if arg.index > 5 {
                return Err(invalid(format!("syscalls[{i}].args[{j}].index: {} is not 0-5", arg.index)));
            }
        }
        for filter in [&rule.includes, &rule.excludes].into_iter().flatten() {
            if let Some(k) = &filter.min_kernel {
                parse_kernel(k).ok_or_else(|| invalid(format!("syscalls[{i}]: minKernel {k:?}")))?;
            }
        }
    }
    Ok(profile)
}

/// The embedded `RuntimeDefault` profile.
pub fn runtime_default() -> Result<Profile, SeccompError> {
    parse(RUNTIME_DEFAULT, "RuntimeDefault")
}

/// `"6.18.0-foo"` -> `(6, 18)`.
pub fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// The running kernel's version (`/proc/sys/kernel/osrelease`); `(0, 0)` if unreadable, which
/// leaves out rules that need a minimum kernel.
pub fn running_kernel() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| parse_kernel(&r))
        .unwrap_or((0, 0))
}

/// This machine's architecture as Go (and so Docker profiles) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Whether `rule` applies to `target` on architecture `arch` (Docker's semantics): every
/// criterion of `includes` holds (all its capabilities held), and none of `excludes` (any of
/// its capabilities held excludes).
fn applies(rule: &Rule, target: &Target, arch: &str) -> bool {
    let held = |f: &Filter| -> Vec<bool> {
        let caps = f.caps.iter().flatten();
        caps.map(|c| super::security::cap_number(c).is_some_and(|n| target.caps.contains(&n))).collect()
    };
    let kernel_at_least =
        |f: &Filter| f.min_kernel.as_deref().and_then(parse_kernel).map(|k| target.kernel >= k);
    if let Some(inc) = &rule.includes {
        let arches = inc.arches.as_deref().unwrap_or_default();
        if (!arches.is_empty() && !arches.iter().any(|a| a == arch))
            || !held(inc).iter().all(|h| *h)
            || kernel_at_least(inc) == Some(false)
        {
            return false;
        }
    }
    if let Some(exc) = &rule.excludes {
        if exc.arches.iter().flatten().any(|a| a == arch)
            || held(exc).iter().any(|h| *h)
            || kernel_at_least(exc) == Some(true)
        {
            return false;
        }
    }
    true
}

/// Syscall number -> `None` (any arguments) or the alternative argument rules.
type Matches = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_match(m: &mut Matches, nr: i64, rules: Option<Vec<SeccompRule>>) {
    match (m.entry(nr).or_insert_with(|| Some(Vec::new())), rules) {
        (slot @ Some(_), None) => *slot = None,
        (Some(existing), Some(more)) => existing.extend(more),
        (None, _) => {}
    }
}

fn seccompiler_action(action: Action, errno: Option<u32>) -> SeccompAction {
    match action {
        Action::Allow => SeccompAction::Allow,
        Action::Errno => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        Action::KillThread => SeccompAction::KillThread,
        Action::KillProcess => SeccompAction::KillProcess,
        Action::Trap => SeccompAction::Trap,
        Action::Log => SeccompAction::Log,
        Action::Trace => SeccompAction::Trace(errno.unwrap_or(0)),
    }
}

/// The argument rules of one profile entry: its conditions ANDed, except that several
/// conditions on the same argument become alternatives (as runc does).
fn arg_rules(args: &[Arg]) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    if args.is_empty() {
        return Ok(None);
    }
    let cond = |a: &Arg| {
        let (op, value) = match a.op {
            Op::Ne => (SeccompCmpOp::Ne, a.value),
            Op::Lt => (SeccompCmpOp::Lt, a.value),
            Op::Le => (SeccompCmpOp::Le, a.value),
            Op::Eq => (SeccompCmpOp::Eq, a.value),
            Op::Ge => (SeccompCmpOp::Ge, a.value),
            Op::Gt => (SeccompCmpOp::Gt, a.value),
            Op::MaskedEq => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
        };
        SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, op, value)
            .map_err(|e| SeccompError::Compile(e.to_string()))
    };
    let indexes: BTreeSet<u8> = args.iter().map(|a| a.index).collect();
    let rule = |conds| SeccompRule::new(conds).map_err(|e| SeccompError::Compile(e.to_string()));
    if indexes.len() == args.len() {
        Ok(Some(vec![rule(args.iter().map(cond).collect::<Result<_, _>>()?)?]))
    } else {
        Ok(Some(args.iter().map(|a| rule(vec![cond(a)?])).collect::<Result<_, _>>()?))
    }
}

/// `program` with a guard after its architecture check that gives `action` to every syscall
/// number at or above the x32 bit (as libseccomp does for x86-64 filters): otherwise x32
/// numbers slip past the deny rules of a default-allow profile.
fn reject_x32(mut program: BpfProgram, action: SeccompAction) -> Result<BpfProgram, SeccompError> {
    use seccompiler::sock_filter;
    // Classic BPF opcodes (linux/bpf_common.h): BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JGE|BPF_K,
    // BPF_RET|BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    let guard = [
        // A = seccomp_data.nr (offset 0).
        sock_filter { code: LD_W_ABS, jt: 0, jf: 0, k: 0 },
        // nr >= X32_SYSCALL_BIT ? next : skip the return.
        sock_filter { code: JGE_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
        sock_filter { code: RET_K, jt: 0, jf: 0, k: u32::from(action) },
    ];
    if program.len() < ARCH_CHECK_LEN {
        return Err(SeccompError::Compile("seccompiler program without an architecture check".into()));
    }
    // The architecture check's jump lands on the guard; every later jump is relative and
    // stays within the program after it.
    program.splice(ARCH_CHECK_LEN..ARCH_CHECK_LEN, guard);
    if program.len() > MAX_INSNS {
        return Err(SeccompError::Compile(format!("filter too long: {} instructions", program.len())));
    }
    Ok(program)
}

/// Compiles `profile` for `target` into the BPF programs to install, in order.
///
/// seccompiler builds filters with one match and one default action, so a profile with
/// several actions becomes several filters, relying on the kernel running every installed
/// filter and taking the most severe verdict (on a tie, the last installed): first a base
/// filter that gives every syscall some rule mentions `Allow` and the rest the default action;
/// then one filter per other action, giving that action to its matches and `Allow` otherwise.
/// Every filter refuses x32 syscall numbers with the default action (EPERM when the default
/// allows).
pub fn compile(profile: &Profile, target: &Target) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH.to_owned()))?;
    let go = go_arch();
    let default = seccompiler_action(profile.default_action, profile.default_errno_ret);
    let mut mentioned = Matches::new();
    let mut groups: BTreeMap<(Action, Option<u32>), Matches> = BTreeMap::new();
    for rule in profile.syscalls.iter().flatten() {
        if !applies(rule, target, go) {
            continue;
        }
        let action = seccompiler_action(rule.action, rule.errno_ret);
        if action == default {
            continue;
        }
        let args = arg_rules(rule.args.as_deref().unwrap_or_default())?;
        let names = rule.names.iter().flatten().chain(rule.name.as_ref());
        // A name this architecture does not have is skipped, as libseccomp does.
        for nr in names.filter_map(|n| syscalls::Sysno::from_str(n).ok()).map(|s| i64::from(s.id())) {
            add_match(&mut mentioned, nr, args.clone());
            if action != SeccompAction::Allow {
                let key = (rule.action, rule.errno_ret);
                add_match(groups.entry(key).or_default(), nr, args.clone());
            }
        }
    }
    let x32 = if default == SeccompAction::Allow { SeccompAction::Errno(EPERM) } else { default.clone() };
    let build = |m: Matches, mismatch: SeccompAction, matched: SeccompAction| {
        let rules = m.into_iter().map(|(nr, r)| (nr, r.unwrap_or_default())).collect();
        let filter = SeccompFilter::new(rules, mismatch, matched, arch)
            .map_err(|e| SeccompError::Compile(e.to_string()))?;
        let program = BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(e.to_string()))?;
        reject_x32(program, x32.clone())
    };
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(build(mentioned, default, SeccompAction::Allow)?);
    }
    for ((action, errno), m) in groups {
        programs.push(build(m, SeccompAction::Allow, seccompiler_action(action, errno))?);
    }
    Ok(programs)
}

/// Installs compiled filters on the calling thread, in order. Needs no_new_privs or
/// CAP_SYS_ADMIN; a profile that allows everything compiles to nothing and installs nothing.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(caps: &[u32]) -> Target {
        Target { caps: caps.iter().copied().collect(), kernel: (6, 18) }
    }

    #[test]
    fn the_runtime_default_profile_parses_and_compiles() {
        let p = runtime_default().expect("the embedded profile parses");
        assert_eq!(p.default_action, Action::Errno);
        assert_eq!(p.default_errno_ret, Some(1));
        let rules = p.syscalls.as_ref().expect("rules");
        assert!(rules[0].names.as_ref().expect("names").iter().any(|n| n == "read"));
        let default_caps = crate::sys::process::CONTAINER_CAPS;
        let programs = compile(&p, &target(default_caps)).expect("compiles");
        // The base filter and the clone3 ENOSYS filter.
        assert_eq!(programs.len(), 2, "{}", programs.len());
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        // With CAP_SYS_ADMIN, clone3 is allowed: no ENOSYS filter.
        let mut caps = default_caps.to_vec();
        caps.push(21);
        assert_eq!(compile(&p, &target(&caps)).expect("compiles").len(), 1);
    }

    #[test]
    fn includes_and_excludes_follow_caps_arches_and_kernel() {
        let p = runtime_default().expect("parses");
        let rules = p.syscalls.expect("rules");
        let find = |name: &str, action: Action| {
            rules
                .iter()
                .find(|r| r.action == action && r.names.iter().flatten().any(|n| n == name))
                .expect("rule")
                .clone()
        };
        let go = go_arch();
        let mount = find("mount", Action::Allow);
        assert!(!applies(&mount, &target(&[0, 1]), go));
        assert!(applies(&mount, &target(&[21]), go));
        let clone = rules
            .iter()
            .find(|r| r.args.is_some() && r.names.as_deref() == Some(&["clone".to_owned()][..]))
            .expect("clone rule");
        assert!(applies(clone, &target(&[]), "amd64"));
        assert!(!applies(clone, &target(&[21]), "amd64"), "excluded with CAP_SYS_ADMIN");
        assert!(!applies(clone, &target(&[]), "s390x"), "excluded on s390x");
        let ptrace = find("ptrace", Action::Allow);
        assert!(applies(&ptrace, &target(&[]), go));
        assert!(!applies(&ptrace, &Target { caps: BTreeSet::new(), kernel: (4, 4) }, go));
        let arch_prctl = find("arch_prctl", Action::Allow);
        assert!(applies(&arch_prctl, &target(&[]), "amd64"));
        assert!(!applies(&arch_prctl, &target(&[]), "arm64"));
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let err = parse("{\"defaultAction\": \"SCMP_ACT_NOTIFY\"}", "p.json").expect_err("unsupported");
        assert!(err.to_string().contains("p.json") && err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
        let err =
            parse("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"bogus\": 1}", "p.json").expect_err("field");
        assert!(err.to_string().contains("bogus"), "{err}");
        let text = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#;
        let err = parse(text, "p.json").expect_err("index");
        assert!(err.to_string().contains("syscalls[0].args[0].index"), "{err}");
        assert!(parse("not json", "p.json").is_err());
        let err =
            parse(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#, "p")
                .expect_err("no names");
        assert!(err.to_string().contains("no names"), "{err}");
    }

    #[test]
    fn a_deny_list_profile_compiles_to_one_filter_per_action() {
        let text = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]}"#;
        let p = parse(text, "deny.json").expect("parses");
        let programs = compile(&p, &target(&[])).expect("compiles");
        assert_eq!(programs.len(), 2, "no base filter when the default allows");
        let allow_all = parse(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#, "all").expect("parses");
        assert!(compile(&allow_all, &target(&[])).expect("compiles").is_empty());
    }

    #[test]
    fn several_conditions_on_one_argument_are_alternatives() {
        let a = |index, value| Arg { index, value, value_two: 0, op: Op::Eq };
        assert_eq!(arg_rules(&[]).expect("ok"), None);
        assert_eq!(arg_rules(&[a(0, 1), a(1, 2)]).expect("ok").expect("rules").len(), 1);
        assert_eq!(arg_rules(&[a(0, 1), a(0, 2)]).expect("ok").expect("rules").len(), 2);
    }

    /// The errno syscall `nr` fails with under `programs`, in a forked child.
    fn errno_of(programs: &[BpfProgram], nr: libc::c_long) -> i32 {
        crate::sys::process::errno_under_filters(programs, nr).expect("fork and wait")
    }

    #[test]
    fn runtime_default_refuses_io_uring() {
        // io_uring operations run outside seccomp's sight (IORING_OP_SOCKET opens sockets
        // the socket rule would refuse): moby and containerd dropped it from their defaults.
        let p = runtime_default().expect("parses");
        let listed = p.syscalls.iter().flatten().flat_map(|r| r.names.iter().flatten());
        assert!(!listed.clone().any(|n| n.starts_with("io_uring")), "io_uring is not allowed");
        let programs = compile(&p, &target(crate::sys::process::CONTAINER_CAPS)).expect("compiles");
        // Unfiltered, the kernel reads the (null) parameters; the filter answers EPERM first.
        assert_eq!(errno_of(&[], libc::SYS_io_uring_setup), libc::EFAULT);
        assert_eq!(errno_of(&programs, libc::SYS_io_uring_setup), libc::EPERM);
        // What the profile allows still works.
        assert_eq!(errno_of(&programs, libc::SYS_getppid), 0);
    }

    #[test]
    fn x32_syscall_numbers_are_refused_by_every_filter() {
        let x32 = |nr: libc::c_long| nr | X32_SYSCALL_BIT as libc::c_long;
        // A default-allow profile that denies mkdir: mkdir's x32 number would slip past
        // the exact-number rule.
        let text = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#;
        let programs = compile(&parse(text, "deny.json").expect("parses"), &target(&[])).expect("compiles");
        assert_eq!(programs.len(), 1);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(errno_of(&programs, libc::SYS_mkdir), 13);
            // Without a filter the kernel runs it (x32 enabled) or says ENOSYS; never EPERM.
            assert_ne!(errno_of(&[], x32(libc::SYS_getpid)), libc::EPERM);
            assert_eq!(errno_of(&programs, x32(libc::SYS_getpid)), libc::EPERM);
            assert_eq!(errno_of(&programs, x32(libc::SYS_mkdir)), libc::EPERM);
            assert_eq!(errno_of(&programs, libc::SYS_getpid), 0, "native calls pass");
            // RuntimeDefault: every one of its filters refuses them too.
            let p = runtime_default().expect("parses");
            let programs = compile(&p, &target(crate::sys::process::CONTAINER_CAPS)).expect("compiles");
            for program in &programs {
                assert_eq!(errno_of(std::slice::from_ref(program), x32(libc::SYS_getpid)), libc::EPERM);
            }
        }
        // On every architecture the guard follows the architecture check.
        assert!(programs
            .iter()
            .all(|p| p[ARCH_CHECK_LEN].k == 0 && p[ARCH_CHECK_LEN + 1].k == X32_SYSCALL_BIT));
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_kernel("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("5"), Some((5, 0)));
        assert_eq!(parse_kernel("x"), None);
    }
}
