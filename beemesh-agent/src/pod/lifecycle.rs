//! What a pod's containers should do next, as Kubernetes does it: init containers in order,
//! then the app containers; restarts by `restartPolicy` with exponential back-off (10 s
//! doubling to 5 min, reset after 10 min of running); termination by SIGTERM, then SIGKILL
//! after the grace period; the pod phase from the container states. Pure: the runtime
//! reports events with `now` (milliseconds on any monotonic clock) and carries out the
//! returned actions.

use std::time::Duration;

/// First restart delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Running this long without exiting resets the back-off.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// From the manifest's field (`Always` when absent, as Kubernetes).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }
}

/// A container's state, as `get pods` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not started yet, or waiting to restart (`reason`: ContainerCreating, CrashLoopBackOff,
    /// PodInitializing, ErrImagePull...).
    Waiting {
        reason: String,
        until_ms: Option<u64>,
    },
    Running {
        since_ms: u64,
    },
    /// `reason`: Completed, Error or OOMKilled.
    Terminated {
        exit_code: i32,
        reason: String,
    },
}

/// One container's lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub init: bool,
    pub state: State,
    pub restarts: u32,
    /// Exit code and reason of the last run, shown while the container waits to restart.
    pub last_exit: Option<(i32, String)>,
    backoff: Duration,
}

/// What of a container's past outlives the agent (kept in `pods.json`): its restart count,
/// how its last run ended, and the back-off its next crash would wait.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub restarts: u32,
    #[serde(default)]
    pub last_exit_code: Option<i32>,
    #[serde(default)]
    pub last_reason: Option<String>,
    #[serde(default)]
    pub backoff_ms: u64,
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start(String),
    /// Run the container's preStop hook, then report [`Pod::pre_stop_done`].
    PreStop(String),
    /// Send SIGTERM to the container.
    Term(String),
    /// SIGKILL: the grace period is over.
    Kill(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// A pod's containers and where they stand.
#[derive(Clone, Debug)]
pub struct Pod {
    pub restart: RestartPolicy,
    pub containers: Vec<Container>,
    /// Set once deletion started: when the grace period ends.
    deadline_ms: Option<u64>,
    /// Containers whose preStop hook runs (their SIGTERM waits for it).
    pre_stopping: Vec<String>,
    /// `activeDeadlineSeconds` passed: the pod is stopped for good and Failed.
    deadline_exceeded: bool,
}

impl Pod {
    /// `init` and `app` are container names in manifest order.
    pub fn new(restart: RestartPolicy, init: &[&str], app: &[&str]) -> Self {
        let waiting = |name: &&str, init| Container {
            name: (*name).to_owned(),
            init,
            state: State::Waiting { reason: "ContainerCreating".into(), until_ms: None },
            restarts: 0,
            last_exit: None,
            backoff: BACKOFF_INITIAL,
        };
        let containers =
            init.iter().map(|n| waiting(n, true)).chain(app.iter().map(|n| waiting(n, false))).collect();
        Self { restart, containers, deadline_ms: None, pre_stopping: Vec::new(), deadline_exceeded: false }
    }

    fn get(&mut self, name: &str) -> Option<&mut Container> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    fn inits_done(&self) -> bool {
        self.containers
            .iter()
            .filter(|c| c.init)
            .all(|c| matches!(c.state, State::Terminated { exit_code: 0, .. }))
    }

    /// `name`'s history, to be kept across agent restarts.
    pub fn history(&self, name: &str) -> Option<History> {
        let c = self.containers.iter().find(|c| c.name == name)?;
        Some(History {
            restarts: c.restarts,
            last_exit_code: c.last_exit.as_ref().map(|(code, _)| *code),
            last_reason: c.last_exit.as_ref().map(|(_, reason)| reason.clone()),
            backoff_ms: c.backoff.as_millis() as u64,
        })
    }

    /// Puts back what an earlier agent knew of `name` (before anything of this run happens).
    pub fn restore(&mut self, name: &str, h: &History) {
        if let Some(c) = self.get(name) {
            c.restarts = h.restarts;
            c.last_exit = h.last_exit_code.map(|code| (code, h.last_reason.clone().unwrap_or_default()));
            if h.backoff_ms > 0 {
                c.backoff = Duration::from_millis(h.backoff_ms).clamp(BACKOFF_INITIAL, BACKOFF_MAX);
            }
        }
    }

    /// `name` is running a run an earlier agent started (and counted): no restart is counted.
    pub fn resumed(&mut self, name: &str, now: u64) {
        if let Some(c) = self.get(name) {
            c.state = State::Running { since_ms: now };
        }
    }

    /// The runtime started `name`.
    pub fn started(&mut self, name: &str, now: u64) {
        if let Some(c) = self.get(name) {
            // Kubernetes counts a restart when the container starts again, not when it exits.
            if c.last_exit.is_some() {
                c.restarts += 1;
            }
            c.state = State::Running { since_ms: now };
        }
    }

    /// `name` exited with `exit_code` (`oom`: the kernel's OOM killer did it).
    pub fn exited(&mut self, name: &str, exit_code: i32, oom: bool, now: u64) {
        let restart = self.restart;
        let terminating = self.deadline_ms.is_some();
        let Some(c) = self.get(name) else { return };
        if let State::Running { since_ms } = c.state {
            if now.saturating_sub(since_ms) >= BACKOFF_RESET.as_millis() as u64 {
                c.backoff = BACKOFF_INITIAL;
            }
        }
        let reason = if oom {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        // Init containers that fail are retried unless the policy is Never; app containers
        // follow the policy.
        let again = !terminating
            && match restart {
                RestartPolicy::Always => !c.init || exit_code != 0,
                RestartPolicy::OnFailure => exit_code != 0,
                RestartPolicy::Never => false,
            };
        c.last_exit = Some((exit_code, reason.to_owned()));
        if again {
            let until = now + c.backoff.as_millis() as u64;
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
            c.state = State::Waiting { reason: "CrashLoopBackOff".into(), until_ms: Some(until) };
        } else {
            c.state = State::Terminated { exit_code, reason: reason.into() };
        }
    }

    /// Starting `name` failed before it ran (image missing, bad command): it waits with
    /// `reason` and is retried with back-off.
    pub fn failed_to_start(&mut self, name: &str, reason: &str, now: u64) {
        if let Some(c) = self.get(name) {
            let until = now + c.backoff.as_millis() as u64;
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
            c.state = State::Waiting { reason: reason.into(), until_ms: Some(until) };
        }
    }

    /// `name` cannot start yet for a reason that is no failure (its image is being pulled): it
    /// waits with `reason` until `until`, and its back-off stays as it was.
    pub fn not_yet(&mut self, name: &str, reason: &str, until: u64) {
        if let Some(c) = self.get(name) {
            c.state = State::Waiting { reason: reason.into(), until_ms: Some(until) };
        }
    }

    /// Containers waiting with `reason` (their image was missing, and may be there now) are
    /// tried again at the next poll instead of when their back-off ends; the back-off stays.
    pub fn retry_now(&mut self, reason: &str, now: u64) {
        for c in &mut self.containers {
            if let State::Waiting { reason: r, until_ms: Some(until) } = &mut c.state {
                if r == reason && *until > now {
                    *until = now;
                }
            }
        }
    }

    /// Deletion begins: nothing starts again, SIGKILL at `now + grace` (the first call
    /// sets the deadline).
    pub fn begin_termination(&mut self, grace: Duration, now: u64) {
        if self.deadline_ms.is_none() {
            self.deadline_ms = Some(now + grace.as_millis() as u64);
        }
    }

    /// Deletion, as the kubelet orders it: each running container's preStop hook (those
    /// `has_pre_stop` names) first, its SIGTERM once the hook is done
    /// ([`Self::pre_stop_done`]); SIGTERM at once to the others; SIGKILL to whatever still
    /// runs at `now + grace` (a hook included). A hook already running is not started again.
    pub fn terminate(
        &mut self,
        grace: Duration,
        now: u64,
        has_pre_stop: impl Fn(&str) -> bool,
    ) -> Vec<Action> {
        self.begin_termination(grace, now);
        let mut actions = Vec::new();
        for name in self.running().collect::<Vec<_>>() {
            if self.pre_stopping.contains(&name) {
                continue;
            }
            if has_pre_stop(&name) {
                self.pre_stopping.push(name.clone());
                actions.push(Action::PreStop(name));
            } else {
                actions.push(Action::Term(name));
            }
        }
        actions
    }

    /// The pod's `activeDeadlineSeconds` has passed: it is stopped as a deletion stops it
    /// ([`Self::terminate`]), nothing starts again, and its phase is Failed
    /// (`DeadlineExceeded`). Only the first call acts.
    pub fn exceed_deadline(
        &mut self,
        grace: Duration,
        now: u64,
        has_pre_stop: impl Fn(&str) -> bool,
    ) -> Vec<Action> {
        if self.deadline_exceeded {
            return Vec::new();
        }
        self.deadline_exceeded = true;
        self.terminate(grace, now, has_pre_stop)
    }

    pub fn deadline_exceeded(&self) -> bool {
        self.deadline_exceeded
    }

    /// `name`'s preStop hook has ended (done, failed or cut): SIGTERM, if it still runs
    /// and the grace period is not over (then SIGKILL comes from [`Self::poll`]).
    pub fn pre_stop_done(&mut self, name: &str, now: u64) -> Vec<Action> {
        let Some(i) = self.pre_stopping.iter().position(|n| n == name) else { return Vec::new() };
        self.pre_stopping.swap_remove(i);
        let running = self.running().any(|n| n == name);
        if running && self.deadline_ms.is_some_and(|d| now < d) {
            vec![Action::Term(name.to_owned())]
        } else {
            Vec::new()
        }
    }

    fn running(&self) -> impl Iterator<Item = String> + '_ {
        self.containers.iter().filter(|c| matches!(c.state, State::Running { .. })).map(|c| c.name.clone())
    }

    /// What to do at `now`; call after every event and whenever [`Self::next_wakeup`] passes.
    pub fn poll(&mut self, now: u64) -> Vec<Action> {
        if let Some(deadline) = self.deadline_ms {
            return if now >= deadline { self.running().map(Action::Kill).collect() } else { Vec::new() };
        }
        let ready = |c: &Container| match &c.state {
            State::Waiting { until_ms, .. } => until_ms.is_none_or(|u| now >= u),
            _ => false,
        };
        // Init containers one at a time, in order; app containers once all init ones are done.
        if let Some(first) = self
            .containers
            .iter()
            .find(|c| c.init && !matches!(c.state, State::Terminated { exit_code: 0, .. }))
        {
            return if ready(first) { vec![Action::Start(first.name.clone())] } else { Vec::new() };
        }
        self.containers
            .iter()
            .filter(|c| !c.init && ready(c))
            .map(|c| Action::Start(c.name.clone()))
            .collect()
    }

    /// When `poll` has something new to say (a back-off or the grace period ending).
    pub fn next_wakeup(&self) -> Option<u64> {
        if let Some(d) = self.deadline_ms {
            return Some(d);
        }
        self.containers
            .iter()
            .filter_map(|c| match c.state {
                State::Waiting { until_ms, .. } => until_ms,
                _ => None,
            })
            .min()
    }

    /// The pod phase, as Kubernetes computes it.
    pub fn phase(&self) -> Phase {
        if self.deadline_exceeded {
            return Phase::Failed;
        }
        let apps: Vec<&Container> = self.containers.iter().filter(|c| !c.init).collect();
        if !self.inits_done() {
            let init_failed = self.containers.iter().any(|c| {
                c.init && matches!(&c.state, State::Terminated { exit_code, .. } if *exit_code != 0)
            });
            return if init_failed { Phase::Failed } else { Phase::Pending };
        }
        if apps.iter().any(|c| matches!(c.state, State::Running { .. })) {
            return Phase::Running;
        }
        let all_done = apps.iter().all(|c| matches!(c.state, State::Terminated { .. }));
        if all_done {
            let failed = apps
                .iter()
                .any(|c| matches!(&c.state, State::Terminated { exit_code, .. } if *exit_code != 0));
            return if failed { Phase::Failed } else { Phase::Succeeded };
        }
        // Restarting (back-off) counts as Running once something ran, else Pending.
        if apps.iter().any(|c| c.restarts > 0) {
            Phase::Running
        } else {
            Phase::Pending
        }
    }

    /// Every container is stopped (after [`Self::terminate`]).
    pub fn stopped(&self) -> bool {
        self.running().next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn init_containers_run_first_and_in_order() {
        let mut p = Pod::new(RestartPolicy::Always, &["migrate", "warm"], &["app", "side"]);
        assert_eq!(p.poll(0), vec![Action::Start("migrate".into())]);
        p.started("migrate", 0);
        assert!(p.poll(1).is_empty());
        assert_eq!(p.phase(), Phase::Pending);
        p.exited("migrate", 0, false, 2);
        assert_eq!(p.poll(2), vec![Action::Start("warm".into())]);
        p.started("warm", 2);
        p.exited("warm", 0, false, 3);
        assert_eq!(p.poll(3), vec![Action::Start("app".into()), Action::Start("side".into())]);
        p.started("app", 3);
        p.started("side", 3);
        assert_eq!(p.phase(), Phase::Running);
    }

    #[test]
    fn crash_loop_backs_off_exponentially_and_resets() {
        let mut p = Pod::new(RestartPolicy::Always, &[], &["app"]);
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            assert_eq!(p.poll(now), vec![Action::Start("app".into())]);
            p.started("app", now);
            p.exited("app", 1, false, now + S);
            let wake = p.next_wakeup().expect("backing off");
            delays.push((wake - (now + S)) / S);
            assert!(p.poll(wake - 1).is_empty(), "restarted before the back-off ended");
            now = wake;
        }
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300]);
        // Seven starts: the first run and six restarts; the seventh restart is pending.
        assert_eq!(p.containers[0].restarts, 6);
        assert!(
            matches!(&p.containers[0].state, State::Waiting { reason, .. } if reason == "CrashLoopBackOff")
        );
        // Ten minutes of running resets the back-off.
        p.started("app", now);
        p.exited("app", 1, false, now + 601 * S);
        assert_eq!(p.next_wakeup(), Some(now + 601 * S + 10 * S));
    }

    #[test]
    fn restart_policies_and_phases() {
        let mut never = Pod::new(RestartPolicy::Never, &[], &["job"]);
        never.started("job", 0);
        never.exited("job", 0, false, 5);
        assert!(never.poll(100 * S).is_empty());
        assert_eq!(never.phase(), Phase::Succeeded);

        let mut on_failure = Pod::new(RestartPolicy::OnFailure, &[], &["job"]);
        on_failure.started("job", 0);
        on_failure.exited("job", 137, true, 5);
        assert!(matches!(on_failure.containers[0].state, State::Waiting { .. }), "failure restarts");
        assert_eq!(on_failure.containers[0].last_exit, Some((137, "OOMKilled".into())));
        let wake = on_failure.next_wakeup().expect("back-off");
        on_failure.started("job", wake);
        on_failure.exited("job", 0, false, wake + 1);
        assert_eq!(on_failure.phase(), Phase::Succeeded);

        let mut oom = Pod::new(RestartPolicy::Never, &[], &["hog"]);
        oom.started("hog", 0);
        oom.exited("hog", 137, true, 1);
        assert_eq!(oom.containers[0].state, State::Terminated { exit_code: 137, reason: "OOMKilled".into() });
        assert_eq!(oom.phase(), Phase::Failed);

        let mut init_fails = Pod::new(RestartPolicy::Never, &["setup"], &["app"]);
        init_fails.started("setup", 0);
        init_fails.exited("setup", 2, false, 1);
        assert_eq!(init_fails.phase(), Phase::Failed);
        assert!(init_fails.poll(10 * S).is_empty(), "app never starts after a failed init");
    }

    #[test]
    fn history_survives_into_a_new_lifecycle() {
        let mut p = Pod::new(RestartPolicy::Always, &[], &["app"]);
        p.started("app", 0);
        p.exited("app", 3, false, 1_000);
        p.started("app", 11_000);
        p.exited("app", 3, false, 12_000);
        let h = p.history("app").expect("known container");
        assert_eq!(h.restarts, 1);
        assert_eq!((h.last_exit_code, h.last_reason.as_deref()), (Some(3), Some("Error")));
        assert_eq!(h.backoff_ms, 40_000, "two crashes: the next waits 40 s");
        let mut again = Pod::new(RestartPolicy::Always, &[], &["app"]);
        again.restore("app", &h);
        // Re-adopted as it runs: not a restart.
        again.resumed("app", 0);
        assert_eq!(again.containers[0].restarts, 1);
        again.exited("app", 3, false, 500);
        assert_eq!(
            again.containers[0].state,
            State::Waiting { reason: "CrashLoopBackOff".into(), until_ms: Some(40_500) }
        );
        again.started("app", 41_000);
        assert_eq!(again.containers[0].restarts, 2);
        assert_eq!(again.history("app").map(|h| h.restarts), Some(2));
    }

    #[test]
    fn termination_sends_term_then_kill_after_grace_and_stops_restarts() {
        let mut p = Pod::new(RestartPolicy::Always, &[], &["a", "b"]);
        p.started("a", 0);
        p.started("b", 0);
        assert_eq!(
            p.terminate(Duration::from_secs(30), 10, |_| false),
            vec![Action::Term("a".into()), Action::Term("b".into())]
        );
        p.exited("a", 0, false, 20);
        assert!(matches!(p.containers[0].state, State::Terminated { .. }), "no restart while terminating");
        assert!(p.poll(29 * S).is_empty());
        assert_eq!(p.next_wakeup(), Some(30 * S + 10));
        assert_eq!(p.poll(30 * S + 10), vec![Action::Kill("b".into())]);
        p.exited("b", 137, false, 30 * S + 11);
        assert!(p.stopped());
    }

    #[test]
    fn pre_stop_hooks_run_before_sigterm_inside_the_grace_period() {
        let mut p = Pod::new(RestartPolicy::Always, &[], &["a", "b", "c"]);
        for c in ["a", "b", "c"] {
            p.started(c, 0);
        }
        let hooked = |c: &str| c != "b";
        assert_eq!(
            p.terminate(Duration::from_secs(30), 10, hooked),
            vec![Action::PreStop("a".into()), Action::Term("b".into()), Action::PreStop("c".into())]
        );
        // Asked again (an agent's replay): a running hook is not started twice, nor SIGTERM
        // sent before it ends.
        assert_eq!(p.terminate(Duration::from_secs(30), 20, hooked), vec![Action::Term("b".into())]);
        assert_eq!(p.pre_stop_done("a", 5 * S), vec![Action::Term("a".into())]);
        assert!(p.pre_stop_done("a", 5 * S).is_empty(), "once");
        // A hook that outlives the grace period: SIGKILL, no SIGTERM after it.
        assert_eq!(
            p.poll(30 * S + 10),
            vec![Action::Kill("a".into()), Action::Kill("b".into()), Action::Kill("c".into())]
        );
        assert!(p.pre_stop_done("c", 30 * S + 20).is_empty());
        // A container that ended during its hook gets nothing.
        let mut q = Pod::new(RestartPolicy::Always, &[], &["a"]);
        q.started("a", 0);
        assert_eq!(q.terminate(Duration::from_secs(30), 0, |_| true), vec![Action::PreStop("a".into())]);
        q.exited("a", 0, false, S);
        assert!(q.pre_stop_done("a", 2 * S).is_empty());
    }

    #[test]
    fn an_exceeded_deadline_stops_the_pod_for_good_as_failed() {
        let mut p = Pod::new(RestartPolicy::Always, &[], &["a"]);
        p.started("a", 0);
        assert_eq!(
            p.exceed_deadline(Duration::from_secs(5), 60 * S, |_| false),
            vec![Action::Term("a".into())]
        );
        assert!(p.exceed_deadline(Duration::from_secs(5), 61 * S, |_| false).is_empty(), "once");
        assert_eq!(p.phase(), Phase::Failed);
        p.exited("a", 143, false, 62 * S);
        assert!(p.poll(120 * S).is_empty(), "no restart");
        assert!(p.stopped() && p.deadline_exceeded());
        assert_eq!(p.phase(), Phase::Failed);
    }

    #[test]
    fn start_failures_wait_with_their_reason() {
        let mut p = Pod::new(RestartPolicy::Always, &[], &["app"]);
        p.failed_to_start("app", "ErrImagePull", 0);
        assert!(matches!(&p.containers[0].state, State::Waiting { reason, .. } if reason == "ErrImagePull"));
        assert!(p.poll(S).is_empty());
        assert_eq!(p.poll(10 * S), vec![Action::Start("app".into())]);
        assert_eq!(p.phase(), Phase::Pending);
    }

    #[test]
    fn an_image_that_arrives_cuts_the_wait_short_but_keeps_the_back_off() {
        let mut p = Pod::new(RestartPolicy::Always, &[], &["app"]);
        p.failed_to_start("app", "ErrImagePull", 0);
        p.failed_to_start("app", "ErrImagePull", 10 * S);
        assert!(p.poll(11 * S).is_empty(), "waits 20 s now");
        p.retry_now("CreateContainerConfigError", 11 * S);
        assert!(p.poll(11 * S).is_empty(), "another reason does not wake it");
        p.retry_now("ErrImagePull", 11 * S);
        assert_eq!(p.poll(11 * S), vec![Action::Start("app".into())]);
        p.failed_to_start("app", "ErrImagePull", 11 * S);
        assert!(p.poll(11 * S + 39 * S).is_empty(), "the back-off went on doubling: 40 s");
    }
}
