//! A container's security settings from its Pod's `securityContext` (pod level, overridden
//! field by field at container level, as in Kubernetes): the user and groups it runs as,
//! capabilities, no_new_privs, seccomp profile, read-only root, privileged; and the rules
//! for hostPath volumes. `plan` and `check_host_path` are sans-IO; `spec_for` loads the
//! seccomp profile a plan names (the embedded `RuntimeDefault`, or a `Localhost` file) into
//! the `SecuritySpec` pod init and `pod-exec` apply.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SeccompProfile, SecurityContext};

use super::proto::SecuritySpec;
use super::seccomp::{self, SeccompError};
use crate::yamldoc::FieldError;

/// Linux capabilities by number (`include/uapi/linux/capability.h`).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `NET_ADMIN`, `CAP_NET_ADMIN` (any case) -> 12.
pub fn cap_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    CAPABILITIES.iter().position(|c| *c == full).and_then(|i| u32::try_from(i).ok())
}

/// Which seccomp profile a container runs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seccomp {
    Unconfined,
    /// The embedded profile (`seccomp::RUNTIME_DEFAULT`): the default when none is set.
    RuntimeDefault,
    /// `localhostProfile`: a path relative to the agent's `seccompProfileDir`.
    Localhost(String),
}

/// A container's security settings, resolved from the pod and container `securityContext`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityPlan {
    /// Overrides the image's user.
    pub run_as_user: Option<u32>,
    /// Overrides the image user's group.
    pub run_as_group: Option<u32>,
    /// Refuse to start if the container would run as uid 0.
    pub run_as_non_root: bool,
    /// Supplementary groups: `supplementalGroups`, then `fsGroup`.
    pub groups: Vec<u32>,
    /// `fsGroup`: owns the pod's writable volumes.
    pub fs_group: Option<u32>,
    pub read_only_root: bool,
    /// Set unless `allowPrivilegeEscalation: true` or privileged.
    pub no_new_privs: bool,
    /// Full capability set, no seccomp, /proc and /sys neither masked nor read-only.
    pub privileged: bool,
    /// The bounding set (what root in the container holds): Docker's default set with
    /// `capabilities.add`/`drop` applied; every capability when privileged.
    pub capabilities: BTreeSet<u32>,
    pub seccomp: Seccomp,
}

fn id(n: i64) -> Option<u32> {
    u32::try_from(n).ok().filter(|n| *n != u32::MAX)
}

fn seccomp_choice(p: &SeccompProfile) -> Seccomp {
    match p.type_.as_str() {
        "Unconfined" => Seccomp::Unconfined,
        "Localhost" => Seccomp::Localhost(p.localhost_profile.clone().unwrap_or_default()),
        _ => Seccomp::RuntimeDefault,
    }
}

/// The security plan of container `c` of a pod whose `securityContext` is `pod_sc`. Infallible:
/// `validate` (run on apply) has refused what cannot be honoured.
pub fn plan(pod_sc: Option<&PodSecurityContext>, c: &Container) -> SecurityPlan {
    let sc = c.security_context.as_ref();
    let pick = |c: Option<i64>, p: Option<i64>| c.or(p).and_then(id);
    let privileged = sc.and_then(|s| s.privileged) == Some(true);
    let fs_group = pod_sc.and_then(|p| p.fs_group).and_then(id);
    let mut groups: Vec<u32> = pod_sc
        .and_then(|p| p.supplemental_groups.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|g| id(*g))
        .collect();
    groups.extend(fs_group);
    let mut seen = BTreeSet::new();
    groups.retain(|g| seen.insert(*g));
    let all: BTreeSet<u32> = (0..CAPABILITIES.len()).filter_map(|i| u32::try_from(i).ok()).collect();
    let capabilities = if privileged {
        all
    } else {
        // containerd's order: ALL first, then single names added, then single names dropped.
        let mut caps: BTreeSet<u32> = crate::sys::process::CONTAINER_CAPS.iter().copied().collect();
        let set = sc.and_then(|s| s.capabilities.as_ref());
        let add = set.and_then(|c| c.add.as_deref()).unwrap_or_default();
        let drop = set.and_then(|c| c.drop.as_deref()).unwrap_or_default();
        let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
        if add.iter().any(is_all) {
            caps = all;
        }
        if drop.iter().any(is_all) {
            caps.clear();
        }
        caps.extend(add.iter().filter_map(|n| cap_number(n)));
        for n in drop.iter().filter_map(|n| cap_number(n)) {
            caps.remove(&n);
        }
        caps
    };
    let profile =
        sc.and_then(|s| s.seccomp_profile.as_ref()).or(pod_sc.and_then(|p| p.seccomp_profile.as_ref()));
    SecurityPlan {
        run_as_user: pick(sc.and_then(|s| s.run_as_user), pod_sc.and_then(|p| p.run_as_user)),
        run_as_group: pick(sc.and_then(|s| s.run_as_group), pod_sc.and_then(|p| p.run_as_group)),
        run_as_non_root: sc.and_then(|s| s.run_as_non_root).or(pod_sc.and_then(|p| p.run_as_non_root))
            == Some(true),
        groups,
        fs_group,
        read_only_root: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        no_new_privs: !privileged && sc.and_then(|s| s.allow_privilege_escalation) != Some(true),
        privileged,
        capabilities,
        seccomp: if privileged {
            Seccomp::Unconfined
        } else {
            profile.map_or(Seccomp::RuntimeDefault, seccomp_choice)
        },
    }
}

/// Checks the values of the pod's and its containers' `securityContext` (no agent
/// configuration needed: `check_against_config` does the rest at apply).
pub(crate) fn validate(pod: &Pod, at: &dyn Fn(&str) -> String) -> Result<(), FieldError> {
    let Some(spec) = &pod.spec else { return Ok(()) };
    let ids = |field: String, values: &[Option<i64>]| -> Result<(), FieldError> {
        match values.iter().flatten().find(|v| id(**v).is_none()) {
            Some(v) => Err(FieldError::new(field, format!("{v} is not a valid id (0 to 4294967294)"))),
            None => Ok(()),
        }
    };
    if let Some(p) = &spec.security_context {
        let f = |name: &str| at(&format!("spec.securityContext.{name}"));
        ids(f("runAsUser"), &[p.run_as_user])?;
        ids(f("runAsGroup"), &[p.run_as_group])?;
        ids(f("fsGroup"), &[p.fs_group])?;
        let groups: Vec<Option<i64>> = p.supplemental_groups.iter().flatten().map(|g| Some(*g)).collect();
        ids(f("supplementalGroups"), &groups)?;
        if let Some(s) = &p.seccomp_profile {
            validate_seccomp(s, &f("seccompProfile"))?;
        }
    }
    let lists = [
        ("initContainers", spec.init_containers.as_deref().unwrap_or_default()),
        ("containers", spec.containers.as_slice()),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            if let Some(sc) = &c.security_context {
                validate_container(sc, &|name: &str| {
                    at(&format!("spec.{list}[{i}].securityContext.{name}"))
                })?;
            }
        }
    }
    Ok(())
}

fn validate_container(sc: &SecurityContext, f: &dyn Fn(&str) -> String) -> Result<(), FieldError> {
    let id_ok = |name: &str, v: Option<i64>| match v {
        Some(v) if id(v).is_none() => {
            Err(FieldError::new(f(name), format!("{v} is not a valid id (0 to 4294967294)")))
        }
        _ => Ok(()),
    };
    id_ok("runAsUser", sc.run_as_user)?;
    id_ok("runAsGroup", sc.run_as_group)?;
    if let Some(caps) = &sc.capabilities {
        for (kind, list) in [("add", &caps.add), ("drop", &caps.drop)] {
            for (j, name) in list.iter().flatten().enumerate() {
                if !name.eq_ignore_ascii_case("ALL") && cap_number(name).is_none() {
                    return Err(FieldError::new(
                        f(&format!("capabilities.{kind}[{j}]")),
                        format!("unknown capability {name:?}"),
                    )
                    .at(name.clone()));
                }
            }
        }
    }
    if sc.privileged == Some(true) && sc.allow_privilege_escalation == Some(false) {
        return Err(FieldError::new(
            f("allowPrivilegeEscalation"),
            "cannot be false for a privileged container",
        ));
    }
    if let Some(s) = &sc.seccomp_profile {
        validate_seccomp(s, &f("seccompProfile"))?;
    }
    Ok(())
}

fn validate_seccomp(p: &SeccompProfile, field: &str) -> Result<(), FieldError> {
    match (p.type_.as_str(), p.localhost_profile.as_deref()) {
        ("RuntimeDefault" | "Unconfined", None) => Ok(()),
        ("Localhost", Some(path)) if is_relative_inside(path) => Ok(()),
        ("Localhost", Some(path)) => Err(FieldError::new(
            format!("{field}.localhostProfile"),
            format!("{path:?} must be a relative path without '..'"),
        )),
        ("Localhost", None) => {
            Err(FieldError::new(format!("{field}.localhostProfile"), "required when type is Localhost"))
        }
        ("RuntimeDefault" | "Unconfined", Some(_)) => {
            Err(FieldError::new(format!("{field}.localhostProfile"), "only allowed when type is Localhost"))
        }
        (other, _) => Err(FieldError::new(
            format!("{field}.type"),
            format!("{other:?}: expected RuntimeDefault, Localhost or Unconfined"),
        )
        .at(other.to_owned())),
    }
}

fn is_relative_inside(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// What the agent's configuration allows (`allowPrivileged`, `hostPathAllow`, the directories
/// hostPath volumes may never reach, `seccompProfileDir`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub allow_privileged: bool,
    /// Paths that may not be mounted, nor anything inside them, nor any directory above them
    /// (which would expose them): the agent's own directories.
    pub protected: Vec<PathBuf>,
    /// Paths that may not be mounted, nor anything inside them: /proc, /sys, cgroup and bpf
    /// filesystems.
    pub kernel: Vec<PathBuf>,
    /// When not empty, a hostPath must be one of these or inside one.
    pub allow: Vec<PathBuf>,
    pub seccomp_dir: PathBuf,
}

/// Whether a hostPath volume may mount `path` (absolute, with links already resolved).
pub fn check_host_path(path: &Path, rules: &Rules) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{shown:?} must be an absolute path"));
    }
    if path == Path::new("/") {
        return Err("the host's root directory may not be mounted".into());
    }
    if let Some(p) = rules.protected.iter().find(|p| path.starts_with(p) || p.starts_with(path)) {
        return Err(format!("{shown} would expose the agent's own directory {}", p.display()));
    }
    if let Some(k) = rules.kernel.iter().find(|k| path.starts_with(k)) {
        return Err(format!("{shown} is inside {}, which pods may not mount", k.display()));
    }
    if !rules.allow.is_empty() && !rules.allow.iter().any(|a| path.starts_with(a)) {
        return Err(format!("{shown} is not inside a directory of the agent's hostPathAllow list"));
    }
    Ok(())
}

/// `path` with `.`, `..` and symbolic links resolved as far as it exists (a path to be created
/// is resolved through its deepest existing parent), so a link cannot smuggle in a refused
/// directory.
pub fn resolve_host_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                // Once a component is missing, the rest is missing too: `out` stays lexical.
                if let Ok(real) = std::fs::canonicalize(&out) {
                    out = real;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Checks a pod against the agent's configuration: privileged containers, `Localhost` seccomp
/// profiles (read and parsed now, so a missing or bad file is refused at apply), hostPath
/// volumes. Errors name the field.
pub fn check_against_config(pod: &Pod, rules: &Rules) -> Result<(), (String, String)> {
    let Some(spec) = &pod.spec else { return Ok(()) };
    let pod_sc = spec.security_context.as_ref();
    let lists = [
        ("initContainers", spec.init_containers.as_deref().unwrap_or_default()),
        ("containers", spec.containers.as_slice()),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let field = |f: &str| format!("spec.{list}[{i}].securityContext.{f}");
            let plan = plan(pod_sc, c);
            if plan.privileged && !rules.allow_privileged {
                return Err((
                    field("privileged"),
                    "privileged containers are not allowed on this host (agent config allowPrivileged: false)"
                        .into(),
                ));
            }
            if let Seccomp::Localhost(path) = &plan.seccomp {
                let at = if c.security_context.as_ref().and_then(|s| s.seccomp_profile.as_ref()).is_some() {
                    field("seccompProfile.localhostProfile")
                } else {
                    "spec.securityContext.seccompProfile.localhostProfile".into()
                };
                load_localhost(&rules.seccomp_dir, path).map_err(|e| (at, e.to_string()))?;
            }
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(h) = &v.host_path {
            let path = Path::new(&h.path);
            let resolved = if path.is_absolute() { resolve_host_path(path) } else { path.to_path_buf() };
            check_host_path(&resolved, rules)
                .map_err(|reason| (format!("spec.volumes[{i}].hostPath.path"), reason))?;
        }
    }
    Ok(())
}

fn load_localhost(dir: &Path, path: &str) -> Result<seccomp::Profile, SeccompError> {
    let file = dir.join(path);
    let text = std::fs::read_to_string(&file)
        .map_err(|error| SeccompError::Read { path: file.display().to_string(), error })?;
    seccomp::parse(&text, &file.display().to_string())
}

/// What pod init (and `pod-exec`) apply for `plan`: capabilities, groups, no_new_privs, the
/// seccomp profile loaded (`Localhost` profiles from `seccomp_dir`).
pub fn spec_for(plan: &SecurityPlan, seccomp_dir: &Path) -> Result<SecuritySpec, SeccompError> {
    let seccomp = match &plan.seccomp {
        Seccomp::Unconfined => None,
        Seccomp::RuntimeDefault => Some(seccomp::runtime_default()?),
        Seccomp::Localhost(path) => Some(load_localhost(seccomp_dir, path)?),
    };
    Ok(SecuritySpec {
        capabilities: (!plan.privileged).then(|| plan.capabilities.iter().copied().collect()),
        groups: plan.groups.clone(),
        no_new_privs: plan.no_new_privs,
        read_only_root: plan.read_only_root,
        privileged: plan.privileged,
        seccomp,
    })
}

/// Kubernetes' message when `runAsNonRoot` meets uid 0 (the kubelet's wording).
pub fn non_root_error(uid: u32, plan: &SecurityPlan, pod: &str, container: &str) -> Option<String> {
    if !plan.run_as_non_root || uid != 0 {
        return None;
    }
    Some(if plan.run_as_user == Some(0) {
        format!("container's runAsUser breaks non-root policy (pod: {pod:?}, container: {container})")
    } else {
        format!(
            "container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {container})"
        )
    })
}

/// The container's seccomp filters, compiled for its capability set and the running kernel
/// (none when unconfined). Call before forking or in the single-threaded child.
pub fn compile_seccomp(
    sec: &SecuritySpec,
    last_cap: u32,
) -> Result<Vec<seccompiler::BpfProgram>, SeccompError> {
    let Some(profile) = &sec.seccomp else { return Ok(Vec::new()) };
    let caps = match &sec.capabilities {
        Some(caps) => caps.iter().copied().collect(),
        None => (0..=last_cap).collect(),
    };
    seccomp::compile(profile, &seccomp::Target { caps, kernel: seccomp::running_kernel() })
}

/// Drops every capability outside the container's set from the bounding set (all kept when
/// privileged) and clears the ambient set.
pub fn restrict_capabilities(sec: &SecuritySpec, last_cap: u32) -> std::io::Result<()> {
    let all: Vec<u32>;
    let keep = match &sec.capabilities {
        Some(caps) => caps.as_slice(),
        None => {
            all = (0..=last_cap).collect();
            &all
        }
    };
    crate::sys::process::restrict_capabilities(keep, last_cap)
}

/// The last steps before exec: groups and user, then `after_user` (e.g. the parent death
/// signal, which setuid clears), then no_new_privs and the seccomp filter. Without
/// no_new_privs the kernel only takes a filter from a process holding CAP_SYS_ADMIN, so the
/// filter goes in before the user changes (the profile must then allow setuid and friends,
/// as RuntimeDefault does).
pub fn confine(
    uid: u32,
    gid: u32,
    sec: &SecuritySpec,
    filters: &[seccompiler::BpfProgram],
    after_user: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    if !sec.no_new_privs {
        seccomp::install(filters).map_err(|e| e.to_string())?;
    }
    let primary = nix::unistd::Gid::from_raw(gid);
    let mut groups = vec![primary];
    groups.extend(sec.groups.iter().filter(|g| **g != gid).map(|g| nix::unistd::Gid::from_raw(*g)));
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setgid(primary).map_err(|e| format!("setgid: {e}"))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).map_err(|e| format!("setuid: {e}"))?;
    after_user()?;
    if sec.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
        seccomp::install(filters).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("pod yaml")
    }

    const RESTRICTED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: r}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 3000
    fsGroup: 2000
    supplementalGroups: [4000, 2000]
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: c
    image: busybox:1
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
      readOnlyRootFilesystem: true
"#;

    #[test]
    fn a_restricted_pod_plans_as_written() {
        let p = pod(RESTRICTED);
        let spec = p.spec.as_ref().expect("spec");
        validate(&p, &|f: &str| f.to_owned()).expect("valid");
        let plan = plan(spec.security_context.as_ref(), &spec.containers[0]);
        assert_eq!(plan.run_as_user, Some(1000));
        assert_eq!(plan.run_as_group, Some(3000));
        assert!(plan.run_as_non_root && plan.no_new_privs && plan.read_only_root && !plan.privileged);
        assert_eq!(plan.groups, vec![4000, 2000], "supplementalGroups then fsGroup, once each");
        assert_eq!(plan.fs_group, Some(2000));
        assert_eq!(plan.capabilities, BTreeSet::from([10]), "only NET_BIND_SERVICE");
        assert_eq!(plan.seccomp, Seccomp::RuntimeDefault);
        let s = spec_for(&plan, Path::new("/nonexistent")).expect("spec");
        assert_eq!(s.capabilities, Some(vec![10]));
        assert!(s.no_new_privs && s.seccomp.is_some());
    }

    #[test]
    fn defaults_and_container_overrides() {
        let p = pod(r#"
metadata: {name: d}
spec:
  securityContext: {runAsUser: 5, seccompProfile: {type: Unconfined}}
  containers:
  - {name: a, image: x}
  - name: b
    image: x
    securityContext:
      runAsUser: 7
      allowPrivilegeEscalation: true
      seccompProfile: {type: Localhost, localhostProfile: profiles/audit.json}
      capabilities: {add: [CAP_NET_ADMIN, sys_time], drop: [chown]}
  - {name: c, image: x, securityContext: {privileged: true}}
"#);
        let spec = p.spec.as_ref().expect("spec");
        let psc = spec.security_context.as_ref();
        let a = plan(psc, &spec.containers[0]);
        assert_eq!(a.run_as_user, Some(5));
        assert_eq!(a.seccomp, Seccomp::Unconfined);
        assert!(a.no_new_privs, "no_new_privs unless escalation is allowed");
        let default: BTreeSet<u32> = crate::sys::process::CONTAINER_CAPS.iter().copied().collect();
        assert_eq!(a.capabilities, default);
        let b = plan(psc, &spec.containers[1]);
        assert_eq!(b.run_as_user, Some(7), "the container wins");
        assert!(!b.no_new_privs);
        assert_eq!(b.seccomp, Seccomp::Localhost("profiles/audit.json".into()));
        assert!(b.capabilities.contains(&12) && b.capabilities.contains(&25) && !b.capabilities.contains(&0));
        let c = plan(psc, &spec.containers[2]);
        assert!(c.privileged && !c.no_new_privs);
        assert_eq!(c.seccomp, Seccomp::Unconfined);
        assert_eq!(c.capabilities.len(), CAPABILITIES.len());
        let s = spec_for(&c, Path::new("/x")).expect("spec");
        assert_eq!(s.capabilities, None, "privileged keeps the full set");
        assert!(s.seccomp.is_none());
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("spec: {securityContext: {runAsUser: -1}, containers: [{name: c, image: x}]}", "spec.securityContext.runAsUser"),
            (
                "spec: {containers: [{name: c, image: x, securityContext: {capabilities: {add: [NET_ADMINN]}}}]}",
                "spec.containers[0].securityContext.capabilities.add[0]",
            ),
            (
                "spec: {containers: [{name: c, image: x, securityContext: {seccompProfile: {type: Localhost}}}]}",
                "spec.containers[0].securityContext.seccompProfile.localhostProfile",
            ),
            (
                "spec: {containers: [{name: c, image: x, securityContext: {seccompProfile: {type: Localhost, localhostProfile: ../x}}}]}",
                "localhostProfile",
            ),
            ("spec: {securityContext: {seccompProfile: {type: Bogus}}, containers: [{name: c, image: x}]}", "seccompProfile.type"),
            (
                "spec: {containers: [{name: c, image: x, securityContext: {privileged: true, allowPrivilegeEscalation: false}}]}",
                "allowPrivilegeEscalation",
            ),
        ];
        for (yaml, field) in cases {
            let err = validate(&pod(yaml), &|f: &str| f.to_owned()).expect_err(yaml);
            assert!(err.field.contains(field), "{yaml}: {} {}", err.field, err.reason);
        }
    }

    fn rules() -> Rules {
        Rules {
            protected: vec!["/var/lib/beemesh".into(), "/run/beemesh".into(), "/etc/beemesh/policy.d".into()],
            kernel: vec!["/proc".into(), "/sys".into(), "/sys/fs/bpf".into()],
            ..Rules::default()
        }
    }

    #[test]
    fn host_paths_keep_away_from_the_agent_and_the_kernel() {
        let r = rules();
        for ok in ["/srv/data", "/etc/ssl/certs", "/var/lib/other", "/var/log"] {
            check_host_path(Path::new(ok), &r).expect(ok);
        }
        for bad in [
            "/",
            "/proc",
            "/proc/1/root",
            "/sys/fs/cgroup",
            "/var/lib/beemesh/pods",
            "/var/lib",
            "/run",
            "relative",
        ] {
            assert!(check_host_path(Path::new(bad), &r).is_err(), "{bad}");
        }
        let strict = Rules { allow: vec!["/srv".into()], ..rules() };
        check_host_path(Path::new("/srv/data"), &strict).expect("allowed");
        let err = check_host_path(Path::new("/var/log"), &strict).expect_err("not in the list");
        assert!(err.contains("hostPathAllow"), "{err}");
    }

    #[test]
    fn host_paths_resolve_links_and_dots() {
        let tmp = tempfile::tempdir().expect("tmp");
        let real = std::fs::canonicalize(tmp.path()).expect("canonical");
        std::os::unix::fs::symlink("/proc", real.join("link")).expect("link");
        assert_eq!(resolve_host_path(&real.join("link/sys")), PathBuf::from("/proc/sys"));
        assert_eq!(resolve_host_path(&real.join("new/../other/x")), real.join("other/x"));
        assert_eq!(resolve_host_path(Path::new("/var/../proc")), PathBuf::from("/proc"));
    }

    #[test]
    fn config_refuses_privileged_bad_profiles_and_host_paths_by_field() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("ok.json"), r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#).expect("write");
        std::fs::write(dir.path().join("bad.json"), "{").expect("write");
        let r = Rules { seccomp_dir: dir.path().to_path_buf(), ..rules() };
        let check = |yaml: &str| check_against_config(&pod(yaml), &r);
        let (field, reason) =
            check("spec: {containers: [{name: c, image: x}, {name: d, image: x, securityContext: {privileged: true}}]}")
                .expect_err("privileged");
        assert_eq!(field, "spec.containers[1].securityContext.privileged");
        assert!(reason.contains("allowPrivileged"), "{reason}");
        let allowed = Rules { allow_privileged: true, ..r.clone() };
        check_against_config(
            &pod("spec: {containers: [{name: d, image: x, securityContext: {privileged: true}}]}"),
            &allowed,
        )
        .expect("allowed by config");
        check("spec: {containers: [{name: c, image: x, securityContext: {seccompProfile: {type: Localhost, localhostProfile: ok.json}}}]}")
            .expect("a good profile");
        let (field, reason) =
            check("spec: {securityContext: {seccompProfile: {type: Localhost, localhostProfile: bad.json}}, containers: [{name: c, image: x}]}")
                .expect_err("bad profile");
        assert_eq!(field, "spec.securityContext.seccompProfile.localhostProfile");
        assert!(reason.contains("bad.json"), "{reason}");
        let (_, reason) =
            check("spec: {containers: [{name: c, image: x, securityContext: {seccompProfile: {type: Localhost, localhostProfile: none.json}}}]}")
                .expect_err("missing profile");
        assert!(reason.contains("none.json"), "{reason}");
        let (field, _) =
            check("spec: {volumes: [{name: v, hostPath: {path: /proc}}], containers: [{name: c, image: x}]}")
                .expect_err("/proc");
        assert_eq!(field, "spec.volumes[0].hostPath.path");
    }

    #[test]
    fn manifests_accept_the_restricted_fields_and_refuse_the_rest_by_name() {
        let objects = crate::manifest::parse("r.yaml", RESTRICTED).expect("a restricted pod is accepted");
        assert_eq!(objects.len(), 1);
        let selinux = RESTRICTED.replace("readOnlyRootFilesystem: true", "seLinuxOptions: {level: s0}");
        let err = crate::manifest::parse("r.yaml", &selinux).expect_err("not implemented");
        assert!(err.to_string().contains("securityContext.seLinuxOptions"), "{err}");
        let bad = RESTRICTED.replace("drop: [ALL]", "drop: [ALLL]");
        let err = crate::manifest::parse("r.yaml", &bad).expect_err("unknown capability");
        assert!(err.to_string().contains("capabilities.drop[0]"), "{err}");
    }

    #[test]
    fn run_as_non_root_uses_the_kubelet_wording() {
        let p = pod(RESTRICTED);
        let spec = p.spec.as_ref().expect("spec");
        let plan = plan(spec.security_context.as_ref(), &spec.containers[0]);
        assert_eq!(non_root_error(1000, &plan, "r_default", "c"), None);
        let msg = non_root_error(0, &plan, "r_default", "c").expect("refused");
        assert!(msg.contains("runAsNonRoot and image will run as root"), "{msg}");
    }
}
