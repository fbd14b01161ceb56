use super::*;

fn svc(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).expect("service")
}

fn pools() -> Pools {
    Pools { cluster_ips: Pool::cidr("10.96.0.0/16").expect("cidr"), node_ports: Pool::node_ports() }
}

const WEB: &str = "metadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n";

fn ip(s: &Service) -> String {
    s.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default()
}

#[test]
fn a_pool_is_its_cidr_less_the_network_the_api_address_and_broadcast() {
    let p = Pool::cidr("10.96.0.0/30").expect_err("too small");
    assert!(p.contains("8 to 28"), "{p}");
    let p = Pool::cidr("10.96.0.0/28").expect("cidr");
    let base = u32::from(Ipv4Addr::new(10, 96, 0, 0));
    assert!(!p.contains(base) && !p.contains(base + 1) && p.contains(base + 2));
    assert!(p.contains(base + 14) && !p.contains(base + 15));
    assert!(Pool::cidr("10.96.0.1/16").expect_err("host bits").contains("host bits"));
    assert!(Pool::cidr("10.96.0.0").is_err() && Pool::cidr("fd00::/64").is_err());
    // A full pool hands out nothing; the last free value is found wherever the hash starts.
    let taken: BTreeMap<u32, String> = (base + 2..base + 14).map(|v| (v, "x".into())).collect();
    assert_eq!(p.allocate("default/web", &taken), Some(base + 14));
    let full: BTreeMap<u32, String> = (base + 2..=base + 14).map(|v| (v, "x".into())).collect();
    assert_eq!(p.allocate("default/web", &full), None);
}

#[test]
fn a_service_gets_an_address_keeps_it_and_another_gets_another() {
    let mut web = svc(WEB);
    assign(&mut web, "default/web", None, &Taken::default(), &pools()).expect("assigned");
    let first = ip(&web);
    assert!(first.starts_with("10.96."), "{first}");
    assert_eq!(web.spec.as_ref().and_then(|s| s.cluster_ips.clone()), Some(vec![first.clone()]));
    // Applied again (no address in the manifest): the state's copy keeps it.
    let mut again = svc(WEB);
    assign(&mut again, "default/web", Some(&web), &Taken::default(), &pools()).expect("kept");
    assert_eq!(ip(&again), first);
    // Another Service never gets it, even when its hash lands there.
    let mut taken = Taken::default();
    taken.add("default/web", &web);
    let mut api = svc(&WEB.replace("name: web", "name: api"));
    assign(&mut api, "default/api", None, &taken, &pools()).expect("assigned");
    assert_ne!(ip(&api), first);
    let mut same_hash = svc(WEB);
    assign(&mut same_hash, "default/web", None, &taken, &pools()).expect("probed past it");
    assert_ne!(ip(&same_hash), first);
}

#[test]
fn asked_addresses_and_ports_are_checked_like_kubernetes() {
    let mut web = svc(WEB);
    assign(&mut web, "default/web", None, &Taken::default(), &pools()).expect("assigned");
    let mut taken = Taken::default();
    taken.add("default/web", &web);
    let asked = |ip: &str| {
        svc(&WEB
            .replace("name: web", "name: api")
            .replace("{selector", &format!("{{clusterIP: \"{ip}\", selector")))
    };
    let err = assign(&mut asked(&ip(&web)), "default/api", None, &taken, &pools()).expect_err("taken");
    assert!(err.ends_with("provided IP is already allocated (to Service default/web)"), "{err}");
    let err = assign(&mut asked("10.1.2.3"), "default/api", None, &taken, &pools()).expect_err("range");
    assert!(err.contains("not in the valid range"), "{err}");
    let err = assign(&mut asked("nope"), "default/api", None, &taken, &pools()).expect_err("not an IP");
    assert!(err.starts_with("spec.clusterIP: Invalid value: \"nope\""), "{err}");
    let mut free = asked("10.96.7.7");
    assign(&mut free, "default/api", None, &taken, &pools()).expect("free");
    assert_eq!(ip(&free), "10.96.7.7");
    // Changing it later is refused: the field is immutable.
    let err =
        assign(&mut asked("10.96.7.8"), "default/api", Some(&free), &taken, &pools()).expect_err("immutable");
    assert!(err.ends_with("field is immutable"), "{err}");
    // Headless: no address.
    let mut headless = asked("None");
    assign(&mut headless, "default/api", None, &taken, &pools()).expect("headless");
    assert_eq!(ip(&headless), "None");
}

#[test]
fn cluster_ips_alone_ask_like_cluster_ip_and_the_single_family_is_recorded() {
    let asked =
        WEB.replace("{selector", "{clusterIPs: [10.96.7.9], ipFamilyPolicy: PreferDualStack, selector");
    let mut web = svc(&asked);
    assign(&mut web, "default/web", None, &Taken::default(), &pools()).expect("assigned");
    let spec = web.spec.as_ref().expect("spec");
    assert_eq!(ip(&web), "10.96.7.9");
    assert_eq!(spec.cluster_ips, Some(vec!["10.96.7.9".to_owned()]));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_owned()]));
    assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"), "kept as asked");
    let mut plain = svc(WEB);
    assign(&mut plain, "default/plain", None, &Taken::default(), &pools()).expect("assigned");
    assert_eq!(plain.spec.as_ref().and_then(|s| s.ip_family_policy.as_deref()), Some("SingleStack"));
    let mut headless = svc(&WEB.replace("{selector", "{clusterIPs: [None], selector"));
    assign(&mut headless, "default/h", None, &Taken::default(), &pools()).expect("headless");
    assert_eq!(ip(&headless), "None");
}

#[test]
fn node_ports_are_allocated_kept_and_checked() {
    let np = "metadata: {name: web}\nspec: {type: NodePort, selector: {app: web}, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP, nodePort: 30053}]}\n";
    let mut web = svc(np);
    assign(&mut web, "default/web", None, &Taken::default(), &pools()).expect("assigned");
    let ports: Vec<i32> = web
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .into_iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .collect();
    assert_eq!(ports.len(), 2);
    assert!((30_000..=32_767).contains(&ports[0]) && ports[1] == 30053, "{ports:?}");
    let mut again = svc(np);
    assign(&mut again, "default/web", Some(&web), &Taken::default(), &pools()).expect("kept");
    assert_eq!(
        again.spec.as_ref().and_then(|s| s.ports.clone()),
        web.spec.as_ref().and_then(|s| s.ports.clone())
    );
    let mut taken = Taken::default();
    taken.add("default/web", &web);
    let mut other = svc(&np.replace("name: web", "name: api"));
    let err = assign(&mut other, "default/api", None, &taken, &pools()).expect_err("30053 is web's");
    assert!(
        err.starts_with("spec.ports[1].nodePort: Invalid value: 30053: provided port is already allocated"),
        "{err}"
    );
    let mut low = svc(&np.replace("nodePort: 30053", "nodePort: 8080"));
    let err = assign(&mut low, "default/web2", None, &Taken::default(), &pools()).expect_err("range");
    assert!(err.contains("not in the valid range 30000-32767"), "{err}");
}

#[test]
fn of_services_sharing_a_value_the_first_created_keeps_it() {
    let with_ip = |name: &str, ip: &str| {
        svc(&format!("metadata: {{name: {name}}}\nspec: {{clusterIP: \"{ip}\", ports: [{{port: 80}}]}}\n"))
    };
    let services = vec![
        ("default/b".to_string(), "2026-11-30T10:00:01Z".to_string(), with_ip("b", "10.96.0.9")),
        ("default/a".to_string(), "2026-11-30T10:00:02Z".to_string(), with_ip("a", "10.96.0.9")),
        ("default/c".to_string(), "2026-11-30T10:00:01Z".to_string(), with_ip("c", "10.96.0.9")),
        ("default/d".to_string(), "2026-11-30T10:00:00Z".to_string(), with_ip("d", "10.96.0.10")),
        ("default/h".to_string(), "2026-11-30T10:00:00Z".to_string(), with_ip("h", "None")),
    ];
    assert_eq!(losers(&services), BTreeSet::from(["default/a".to_string(), "default/c".to_string()]));
}

#[test]
fn a_service_gives_up_only_what_an_older_one_holds() {
    let np = |name: &str, ip: &str, port: u32| {
        svc(&format!("metadata: {{name: {name}}}\nspec: {{type: NodePort, clusterIP: \"{ip}\", ports: [{{port: 80, nodePort: {port}}}]}}\n"))
    };
    // b is older than c for the address, a older than b for the port.
    let services = vec![
        ("default/a".to_string(), "2026-11-30T10:00:00Z".to_string(), np("a", "10.96.0.1", 30001)),
        ("default/b".to_string(), "2026-11-30T10:00:01Z".to_string(), np("b", "10.96.0.9", 30001)),
        ("default/c".to_string(), "2026-11-30T10:00:02Z".to_string(), np("c", "10.96.0.9", 30002)),
    ];
    let mut b = services[1].2.clone();
    release_shared(&mut b, "default/b", "2026-11-30T10:00:01Z", &services);
    let spec = b.spec.clone().unwrap_or_default();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.9"), "b keeps the address it holds first");
    assert_eq!(spec.ports.unwrap_or_default()[0].node_port, None, "a holds the port first");
    let mut c = services[2].2.clone();
    release_shared(&mut c, "default/c", "2026-11-30T10:00:02Z", &services);
    assert_eq!(c.spec.clone().unwrap_or_default().cluster_ip, None);
    // An ExternalName Service gets no address.
    let mut ext = svc("metadata: {name: ext}\nspec: {type: ExternalName, externalName: example.com}\n");
    assign(&mut ext, "default/ext", None, &Taken::default(), &pools()).expect("assigned");
    assert_eq!(ext.spec.and_then(|s| s.cluster_ip), None);
}

fn aged(created: &str, uid: &str) -> Aged {
    Aged { created: created.into(), uid: uid.into() }
}

#[test]
fn pod_addresses_are_kept_allocated_apart_and_yielded_only_to_older_pods() {
    let pool = Pool::cidr("10.244.0.0/24").expect("pool");
    let (a, b) = (aged("2026-01-01T00:00:00Z", "a"), aged("2026-01-02T00:00:00Z", "b"));
    // Fresh: each gets an address of the pool, different ones.
    let first = pod_addresses(&pool, &[a.clone(), b.clone()], &BTreeMap::new(), &BTreeMap::new());
    assert_eq!(first.len(), 2);
    assert!(first.values().all(|v| pool.contains(*v)));
    assert_ne!(first["a"], first["b"]);
    // Held addresses stay, whatever the hash says.
    let held: BTreeMap<String, u32> = [("a".to_string(), first["b"]), ("b".to_string(), first["a"])].into();
    assert_eq!(pod_addresses(&pool, &[a.clone(), b.clone()], &held, &BTreeMap::new()), held);
    // An older pod elsewhere reports a's address: a moves; a younger one: a keeps it.
    let older: BTreeMap<u32, Aged> = [(held["a"], aged("2025-12-31T00:00:00Z", "z"))].into();
    let moved = pod_addresses(&pool, std::slice::from_ref(&a), &held, &older);
    assert_ne!(moved["a"], held["a"]);
    assert!(pool.contains(moved["a"]));
    let younger: BTreeMap<u32, Aged> = [(held["a"], aged("2026-02-01T00:00:00Z", "y"))].into();
    assert_eq!(pod_addresses(&pool, std::slice::from_ref(&a), &held, &younger)["a"], held["a"]);
    // Two pods here holding one address: the older keeps it.
    let same: BTreeMap<String, u32> = [("a".to_string(), first["a"]), ("b".to_string(), first["a"])].into();
    let fixed = pod_addresses(&pool, &[b, a], &same, &BTreeMap::new());
    assert_eq!(fixed["a"], first["a"]);
    assert_ne!(fixed["b"], first["a"]);
    // An address outside the pool (a changed podCidr) is replaced.
    let outside: BTreeMap<String, u32> = [("a".to_string(), 1)].into();
    assert!(pool.contains(pod_addresses(&pool, &[aged("x", "a")], &outside, &BTreeMap::new())["a"]));
}
