//! Golden tables of `get KIND` and the `-o json` forms.

use super::*;

fn entry(namespace: &str, name: &str, age: Option<u64>, object: Value) -> ObjectEntry {
    ObjectEntry { namespace: namespace.into(), name: name.into(), age_secs: age, object }
}

#[test]
fn services_deployments_statefulsets_netpols_and_namespaces_have_kubectls_columns() {
    let svc = entry(
        "shop",
        "web",
        Some(30),
        serde_json::json!({"spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP", "name": "dns"}]}}),
    );
    let node = entry(
        "default",
        "edge",
        Some(4000),
        serde_json::json!({"spec": {"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80, "nodePort": 30080}]}}),
    );
    assert_eq!(
        table("Service", &[svc.clone(), node], true, true),
        "NAMESPACE   NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)         AGE   SELECTOR\n\
         shop        web    ClusterIP   <none>       <none>        80/TCP,53/UDP   30s   app=web\n\
         default     edge   NodePort    None         <none>        80:30080/TCP    66m   <none>\n"
    );
    let deploy = entry(
        "shop",
        "web",
        Some(200_000),
        serde_json::json!({"spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            "template": {"spec": {"containers": [{"name": "w", "image": "busybox:1"}, {"name": "s", "image": "side:2"}]}}}}),
    );
    assert_eq!(
        table("Deployment", std::slice::from_ref(&deploy), false, false),
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE\nweb    0/3     0            0           2d\n"
    );
    assert_eq!(
        table("Deployment", &[deploy], false, true),
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE   CONTAINERS   IMAGES             SELECTOR\n\
         web    0/3     0            0           2d    w,s          busybox:1,side:2   app=web,tier in (a,b)\n"
    );
    let sts = entry(
        "shop",
        "db",
        Some(5),
        serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "d", "image": "db:1"}]}}}}),
    );
    assert_eq!(
        table("StatefulSet", &[sts], false, true),
        "NAME   READY   AGE   CONTAINERS   IMAGES\ndb     0/1     5s    d            db:1\n"
    );
    let np = entry("shop", "deny", Some(5), serde_json::json!({"spec": {"podSelector": {}}}));
    let np2 = entry(
        "shop",
        "web-in",
        Some(5),
        serde_json::json!({"spec": {"podSelector": {"matchLabels": {"app": "web"}}}}),
    );
    assert_eq!(
        table("NetworkPolicy", &[np, np2], false, false),
        "NAME     POD-SELECTOR   AGE\ndeny     <none>         5s\nweb-in   app=web        5s\n"
    );
    let ns = entry("", "default", None, serde_json::json!({"status": {"phase": "Active"}}));
    let shop = entry("", "shop", Some(7), serde_json::json!({"status": {"phase": "Active"}}));
    assert_eq!(
        table("Namespace", &[ns, shop], false, false),
        "NAME      STATUS   AGE\ndefault   Active   <unknown>\nshop      Active   7s\n"
    );
    let cm = entry("default", "conf", Some(1), serde_json::json!({"data": {"a": "1", "b": "2"}}));
    let secret = entry(
        "default",
        "tok",
        Some(1),
        serde_json::json!({"type": "kubernetes.io/tls", "data": {"a": "1"}}),
    );
    assert_eq!(table("ConfigMap", &[cm], false, false), "NAME   DATA   AGE\nconf   2      1s\n");
    assert_eq!(
        table("Secret", &[secret], false, false),
        "NAME   TYPE                DATA   AGE\ntok    kubernetes.io/tls   1      1s\n"
    );
}

#[test]
fn one_object_by_name_prints_itself_and_several_a_list() {
    let a = serde_json::json!({"kind": "Service", "metadata": {"name": "a"}});
    let one: Value =
        serde_json::from_str(&render_value(std::slice::from_ref(&a), true, Output::Json)).expect("json");
    assert_eq!(one, a);
    let list: Value =
        serde_json::from_str(&render_value(&[a.clone(), a.clone()], false, Output::Json)).expect("json");
    assert_eq!((list["apiVersion"].as_str(), list["kind"].as_str()), (Some("v1"), Some("List")));
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    let yaml: Value = serde_yaml::from_str(&render_value(&[a], false, Output::Yaml)).expect("yaml");
    assert_eq!(yaml["kind"], "List");
}

#[test]
fn jobs_cron_jobs_and_daemon_sets_have_kubectls_columns() {
    let done = serde_json::json!({"spec": {"completions": 3, "parallelism": 2}, "status": {
        "succeeded": 3, "startTime": "2026-12-01T10:00:00Z", "completionTime": "2026-12-01T10:01:05Z",
        "conditions": [{"type": "Complete", "status": "True"}]}});
    assert_eq!(job_cells(&done, 0), ["Complete", "3/3", "65s"]);
    let running = serde_json::json!({"spec": {"parallelism": 2}, "status": {"succeeded": 1,
        "startTime": "2026-12-01T10:00:00Z"}});
    let now = 1_796_119_230; // 2026-12-01T10:00:30Z
    assert_eq!(job_cells(&running, now), ["Running", "1/1 of 2", "30s"]);
    let cj = entry(
        "default",
        "tick",
        Some(300),
        serde_json::json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "busybox"}]}}}}}, "status": {"active": [{"name": "tick-1"}]}}),
    );
    assert_eq!(
        table("CronJob", &[cj], false, true),
        "NAME   SCHEDULE    TIMEZONE   SUSPEND   ACTIVE   LAST SCHEDULE   AGE   CONTAINERS   IMAGES\n\
         tick   * * * * *   <none>     false     1        <none>          5m    c            busybox\n"
    );
    let ds = entry(
        "default",
        "agent",
        Some(60),
        serde_json::json!({"spec": {}, "status": {"desiredNumberScheduled": 2}}),
    );
    assert!(table("DaemonSet", &[ds], false, false)
        .starts_with("NAME    DESIRED   CURRENT   READY   UP-TO-DATE   AVAILABLE   NODE SELECTOR   AGE\n"));
}
