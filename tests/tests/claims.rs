//! End-to-end checks of stand-alone PersistentVolumeClaims on two real agents, each in a
//! network namespace of its own on one bridge: a claim applied with a Deployment of two
//! replicas is bound to the host its first pod is placed on, the second pod follows it there
//! (spreading would put it on the other host), both see one local volume, a pod deleted comes
//! back on that host to the data it left, a StorageClass is kept and shown as local volumes,
//! and a pod whose claim does not exist stays Pending with Kubernetes' reason.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use beemesh_tests::lan::{joined_mesh, start_ready};
use beemesh_tests::{eventually, Agent};

const T: Duration = Duration::from_secs(60);

const FILE: &str = r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast-ssd}
provisioner: ebs.csi.aws.com
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: uploads}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: fast-ssd
  resources: {requests: {storage: 1Gi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      volumes: [{name: data, persistentVolumeClaim: {claimName: uploads}}]
      containers:
      - name: c
        image: busybox:1
        command: [sh, -c, "ls /data > /data/.$UID; mv /data/.$UID /data/$UID; trap 'exit 0' TERM; sleep 1000 & wait"]
        env: [{name: UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}]
        volumeMounts: [{name: data, mountPath: /data}]
---
apiVersion: v1
kind: Pod
metadata: {name: addressed}
spec:
  containers:
  - name: c
    image: busybox:1
    command: [sh, -c, "echo pod=$POD_IP pods=$POD_IPS host=$HOST_IP hosts=$HOST_IPS; sleep 1000"]
    env:
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: POD_IPS, valueFrom: {fieldRef: {fieldPath: status.podIPs}}}
    - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: HOST_IPS, valueFrom: {fieldRef: {fieldPath: status.hostIPs}}}
---
apiVersion: v1
kind: Pod
metadata: {name: lonely}
spec:
  volumes: [{name: data, persistentVolumeClaim: {claimName: nope}}]
  containers: [{name: c, image: busybox:1, command: [sleep, "1000"], volumeMounts: [{name: data, mountPath: /data}]}]
"#;

/// Running pods named `web-*` per `agent`: uid -> node.
fn web_pods(agent: &Agent) -> BTreeMap<String, String> {
    let list = agent.json(&["get", "pods", "-o", "json"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("web-")))
        .filter(|p| p["status"]["phase"] == "Running")
        .filter_map(|p| {
            Some((p["metadata"]["uid"].as_str()?.to_owned(), p["spec"]["nodeName"].as_str()?.to_owned()))
        })
        .collect()
}

#[test]
fn a_claim_binds_where_its_first_pod_runs_and_keeps_its_pods_and_data_there() -> Result<()> {
    let (_lan, _root, mut agents) = joined_mesh("bcl", 64, 2)?;
    start_ready(&mut agents, T)?;
    let out = agents[1].apply(FILE)?;
    ensure!(
        out.contains("storageclass.storage.k8s.io/fast-ssd created")
            && out.contains("persistentvolumeclaim/uploads created"),
        "{out}"
    );

    // Both replicas on the claim's host.
    ensure!(
        eventually(T, || web_pods(&agents[0]).len() == 2),
        "web: {:?}\n{}",
        web_pods(&agents[0]),
        agents[0].log()
    );
    let pods = web_pods(&agents[0]);
    let host = pods.values().next().cloned().unwrap_or_default();
    ensure!(pods.values().all(|n| *n == host), "the replicas are on two hosts: {pods:?}");
    let claim = agents[1].json(&["get", "pvc", "uploads", "-o", "json"]);
    ensure!(
        claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == host.as_str()
            && claim["status"]["phase"] == "Bound"
            && claim["status"]["capacity"]["storage"] == "1Gi",
        "{claim}"
    );
    let table = agents[0].run_cli(&["get", "pvc"], None)?.1;
    ensure!(
        table.lines().any(|l| l.starts_with("uploads ")
            && l.contains("Bound")
            && l.contains(&format!("local:{host}"))),
        "{table}"
    );
    let table = agents[0].run_cli(&["get", "storageclasses"], None)?.1;
    ensure!(
        table.contains("ebs.csi.aws.com (local volumes)") && table.contains("WaitForFirstConsumer"),
        "{table}"
    );

    // One volume: each pod wrote a file named by its uid (what it found there) into the
    // claim's directory on that host.
    let index: usize = if host == "h1" { 0 } else { 1 };
    let dir = agents[index].state_dir().join("volumes/default/uploads");
    let files = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let uids: Vec<String> = pods.keys().cloned().collect();
    ensure!(eventually(T, || files() == uids), "{:?} in {} vs {uids:?}", files(), dir.display());

    // A replica deleted comes back on the claim's host and finds what the others left.
    let name = agents[0].json(&["get", "pods", "-o", "json"])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["metadata"]["uid"] == uids[0].as_str())
        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let (ok, out, err) = agents[0].run_cli(&["delete", "pod", &name], None)?;
    ensure!(ok, "{out}{err}");
    ensure!(
        eventually(T, || {
            let now = web_pods(&agents[1]);
            now.len() == 2 && !now.contains_key(&uids[0]) && now.values().all(|n| *n == host)
        }),
        "after the delete: {:?}",
        web_pods(&agents[1])
    );
    let new = web_pods(&agents[1]).into_keys().find(|u| !uids.contains(u)).unwrap_or_default();
    ensure!(eventually(T, || files().contains(&new)), "{:?}", files());
    let seen = std::fs::read_to_string(dir.join(&new))?;
    ensure!(uids.iter().all(|u| seen.lines().any(|l| l == u)), "the new pod saw {seen:?}, not {uids:?}");

    // A claim applied again keeps its binding.
    let again = agents[0].apply(FILE)?;
    ensure!(again.contains("persistentvolumeclaim/uploads unchanged"), "{again}");
    let claim = agents[1].json(&["get", "pvc", "uploads", "-o", "json"]);
    ensure!(
        claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == host.as_str(),
        "{claim}"
    );

    // The downward API's addresses: the pod's mesh address and its host's InternalIP.
    let logs =
        |agent: &Agent| agent.run_cli(&["logs", "addressed"], None).map(|(_, o, _)| o).unwrap_or_default();
    ensure!(eventually(T, || logs(&agents[0]).starts_with("pod=")), "{}", logs(&agents[0]));
    let pod = agents[0].json(&["get", "pods", "addressed", "-o", "json"]);
    let (ip, node) =
        (pod["status"]["podIP"].as_str().unwrap_or("?"), pod["spec"]["nodeName"].as_str().unwrap_or("?"));
    let internal = agents[0].json(&["get", "nodes", node, "-o", "json"])["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let want = format!("pod={ip} pods={ip} host={internal} hosts={internal}\n");
    ensure!(
        pod["status"]["hostIP"] == internal.as_str(),
        "the pod's status says hostIP {}",
        pod["status"]["hostIP"]
    );
    ensure!(!internal.is_empty() && logs(&agents[0]) == want, "{:?} vs {want:?}", logs(&agents[0]));

    // A pod of a claim that does not exist waits, saying so.
    let lonely = |agent: &Agent| {
        let p = agent.json(&["get", "pods", "lonely", "-o", "json"]);
        p["status"]["phase"] == "Pending"
            && p["status"]["conditions"][0]["message"] == "persistentvolumeclaim \"nope\" not found"
    };
    ensure!(
        eventually(T, || lonely(&agents[0])),
        "{}",
        agents[0].json(&["get", "pods", "lonely", "-o", "json"])
    );
    Ok(())
}
