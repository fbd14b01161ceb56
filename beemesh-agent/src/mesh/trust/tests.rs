//! Tests of host credentials, attestation and revocation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::identity::svid::Svid;

const TD: &str = "beemesh.local";
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const NONCE: [u8; 32] = [7; 32];

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn root() -> Authority {
    Authority::generate(TD, t0(), 365 * DAY).expect("root")
}

/// A host `name` with a fresh key and a certificate from `ca` (chain: host, then `extra`).
fn host(
    ca: &Authority,
    name: &str,
    extra: &[CertificateDer<'static>],
    roots: &[CertificateDer<'_>],
) -> HostIdentity {
    let keypair = generate_keypair().expect("key");
    let cert = issue::host_cert(ca, name, &keypair.public(), t0(), DAY).expect("host cert");
    let chain = std::iter::once(cert).chain(extra.iter().cloned()).collect();
    HostIdentity::new(keypair, chain, roots, ca.trust_domain(), t0()).expect("identity")
}

fn trust_of(root: &Authority) -> HostTrust {
    HostTrust::new(root.trust_domain(), vec![root.cert_der()])
}

fn svid_chain(
    svid: &Svid,
    ca: &Authority,
    extra: &[CertificateDer<'static>],
) -> Vec<CertificateDer<'static>> {
    [vec![svid.cert_der.clone(), ca.cert_der()], extra.to_vec()].concat()
}

#[test]
fn attestation_round_trip_names_the_certificates_node() {
    let root = root();
    let (a, b) = (host(&root, "h1", &[], &[root.cert_der()]), host(&root, "h2", &[], &[root.cert_der()]));
    let trust = trust_of(&root);
    let att = a.attest(&NONCE, &b.peer_id());
    let got = trust.verify_attestation(&att, &NONCE, &b.peer_id(), &a.peer_id(), t0()).expect("verifies");
    assert_eq!(got, AttestedHost { node_name: "h1".into(), peer: a.peer_id() });

    // Through the trait, as the swarm uses it.
    let attestor: Arc<dyn Attest> = Arc::new(Attestor { identity: Arc::new(b), trust: Arc::new(trust) });
    assert_eq!(attestor.verify(&att, &NONCE, &a.peer_id(), t0()).expect("verifies").node_name, "h1");
}

#[test]
fn attestation_for_another_nonce_verifier_or_peer_is_refused() {
    let root = root();
    let roots = [root.cert_der()];
    let (a, b, c) =
        (host(&root, "h1", &[], &roots), host(&root, "h2", &[], &roots), host(&root, "h3", &[], &roots));
    let trust = trust_of(&root);
    let att = a.attest(&NONCE, &b.peer_id());
    let replay =
        trust.verify_attestation(&att, &[8; 32], &b.peer_id(), &a.peer_id(), t0()).expect_err("replay");
    assert!(matches!(replay, TrustError::BadSignature(_)), "{replay}");
    assert_eq!(replay.to_string(), "bad signature: the attestation is not signed for this challenge");
    // b forwarding a's answer to c's challenge: signed for b, not c.
    let relayed =
        trust.verify_attestation(&att, &NONCE, &c.peer_id(), &a.peer_id(), t0()).expect_err("relay");
    assert!(matches!(relayed, TrustError::BadSignature(_)), "{relayed}");
    // a's attestation presented by c's connection: the certificate is not c's key.
    let stolen =
        trust.verify_attestation(&att, &NONCE, &b.peer_id(), &c.peer_id(), t0()).expect_err("stolen");
    assert!(matches!(stolen, TrustError::PeerMismatch { .. }), "{stolen}");
}

#[test]
fn leaf_for_another_key_is_refused() {
    let root = root();
    let a = host(&root, "h1", &[], &[root.cert_der()]);
    let other = generate_keypair().expect("key");
    // A certificate for `other`'s key, signed over by a's key: the PeerId is not the cert's.
    let att = wire::encode(
        &[issue::host_cert(&root, "h1", &other.public(), t0(), DAY).expect("cert")],
        &a.keypair().sign(&wire::message(&NONCE, &a.peer_id(), &a.peer_id())).expect("sign"),
    );
    let err =
        trust_of(&root).verify_attestation(&att, &NONCE, &a.peer_id(), &a.peer_id(), t0()).expect_err("key");
    assert!(matches!(err, TrustError::PeerMismatch { .. }), "{err}");
    assert!(err.to_string().starts_with("the host certificate is for peer "), "{err}");
    // And the identity refuses to be built from a chain for another key.
    let chain = vec![issue::host_cert(&root, "h1", &other.public(), t0(), DAY).expect("cert")];
    let err = HostIdentity::new(generate_keypair().expect("key"), chain, &[root.cert_der()], TD, t0())
        .expect_err("mismatch");
    assert!(matches!(err, TrustError::PeerMismatch { .. }), "{err}");
}

#[test]
fn another_trust_domain_or_root_is_refused() {
    let ours = root();
    let other_td = Authority::generate("other.local", t0(), DAY).expect("root");
    let stranger = host(&other_td, "h9", &[], &[other_td.cert_der()]);
    let me = host(&ours, "h1", &[], &[ours.cert_der()]);
    let att = stranger.attest(&NONCE, &me.peer_id());
    let both = HostTrust::new(TD, vec![ours.cert_der(), other_td.cert_der()]);
    let err =
        both.verify_attestation(&att, &NONCE, &me.peer_id(), &stranger.peer_id(), t0()).expect_err("td");
    assert_eq!(err.to_string(), "trust domain other.local, expected beemesh.local");

    // Same trust domain name, another root: not ours.
    let impostor_root = root();
    let impostor = host(&impostor_root, "h1", &[], &[impostor_root.cert_der()]);
    let att = impostor.attest(&NONCE, &me.peer_id());
    let err = trust_of(&ours)
        .verify_attestation(&att, &NONCE, &me.peer_id(), &impostor.peer_id(), t0())
        .expect_err("root");
    assert!(matches!(err, TrustError::Svid(SvidError::NotSignedByAuthority)), "{err}");
}

#[test]
fn workload_svid_presented_as_host_is_refused_and_vice_versa() {
    let root = root();
    let roots = [root.cert_der()];
    let me = host(&root, "h1", &[], &roots);
    let svid = root.issue("spiffe://beemesh.local/ns/shop/sa/web", t0(), HOUR).expect("svid");
    let att = wire::encode(std::slice::from_ref(&svid.cert_der), &[0; 64]);
    let err = trust_of(&root)
        .verify_attestation(&att, &NONCE, &me.peer_id(), &me.peer_id(), t0())
        .expect_err("svid");
    assert_eq!(err.to_string(), "a workload SVID presented as a host certificate");
    assert!(verify_host(&[svid.cert_der], &roots, TD, t0()).is_err());

    // A host certificate is never a workload SVID, in either TLS role.
    for role in [PeerRole::Server, PeerRole::Client] {
        let err = svid::verify(me.chain(), &roots, TD, role, t0()).expect_err("host as svid");
        assert_eq!(err.to_string(), "a host certificate presented as a workload SVID");
    }
    // Nor may the workload issuer mint ids under /beemesh/.
    let err = root.issue("spiffe://beemesh.local/beemesh/node/h1", t0(), HOUR).expect_err("reserved");
    assert!(matches!(err, SvidError::WrongCertRole { .. }), "{err}");
}

#[test]
fn workload_chains_through_a_host_issuer_verify_and_roles_stay_apart() {
    let root = root();
    let roots = [root.cert_der()];
    let wca = issue::workload_ca(&root, "h1", t0(), DAY).expect("workload ca");
    let web = "spiffe://beemesh.local/ns/shop/sa/web";
    let svid = wca.issue(web, t0(), HOUR).expect("svid");
    let chain = svid_chain(&svid, &wca, &[]);
    assert_eq!(svid::verify(&chain, &roots, TD, PeerRole::Client, t0()).expect("verifies"), web);
    assert!(matches!(
        svid::verify(&chain[..1], &roots, TD, PeerRole::Client, t0()),
        Err(SvidError::NotSignedByAuthority)
    ));

    // A compromised host signs a host certificate with its workload issuer: refused.
    let forged_key = generate_keypair().expect("key");
    let err = issue::host_cert(&wca, "h2", &forged_key.public(), t0(), DAY).expect_err("role");
    assert!(matches!(err, TrustError::CannotIssue(_)), "{err}");
    // Even hand-made (rcgen will sign anything): the chain does not verify as a host.
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names =
        vec![rcgen::SanType::URI("spiffe://beemesh.local/beemesh/node/h2".try_into().expect("ia5"))];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = svid::to_offset(t0() - HOUR).expect("time");
    params.not_after = svid::to_offset(t0() + HOUR).expect("time");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let forged = params.signed_by(&leaf_key, wca.issuer()).expect("signs");
    let err =
        verify_host(&[forged.der().clone(), wca.cert_der()], &roots, TD, t0()).expect_err("forged host");
    assert_eq!(
        err.to_string(),
        "intermediate spiffe://beemesh.local/beemesh/node/h1/workloads: a host's workload issuer may not sign host certificates"
    );

    // An issuer signs hosts, not workloads.
    let issuer = issue::issuer_ca(&root, "ops", t0(), DAY).expect("issuer");
    let stray = issuer.issue(web, t0(), HOUR).expect("rcgen signs");
    let err = svid::verify(&svid_chain(&stray, &issuer, &[]), &roots, TD, PeerRole::Client, t0())
        .expect_err("issuer");
    assert!(matches!(err, SvidError::BadIntermediate { .. }), "{err}");
    // Only the root makes issuers; a workload issuer makes no CA at all.
    assert!(matches!(issue::issuer_ca(&issuer, "x", t0(), DAY), Err(TrustError::CannotIssue(_))));
    assert!(matches!(issue::workload_ca(&wca, "x", t0(), DAY), Err(TrustError::CannotIssue(_))));
    assert!(matches!(
        issue::host_cert(&root, "Bad_Name", &forged_key.public(), t0(), DAY),
        Err(TrustError::BadName(_))
    ));
}

#[test]
fn hosts_issued_by_an_issuer_verify_with_its_chain() {
    let root = root();
    let roots = [root.cert_der()];
    let issuer = issue::issuer_ca(&root, "ops", t0(), DAY).expect("issuer");
    let h = host(&issuer, "h5", &[issuer.cert_der()], &roots);
    assert_eq!(h.chain().len(), 2);
    assert_eq!(verify_host(h.chain(), &roots, TD, t0()).expect("verifies"), "h5");
    assert!(verify_host(&h.chain()[..1], &roots, TD, t0()).is_err(), "needs the issuer");
    // Its workload issuer (root -> issuer -> workload issuer -> svid) verifies too.
    let wca = issue::workload_ca(&issuer, "h5", t0(), DAY).expect("workload ca");
    let svid = wca.issue("spiffe://beemesh.local/ns/a/sa/b", t0(), HOUR).expect("svid");
    let chain = svid_chain(&svid, &wca, &[issuer.cert_der()]);
    assert!(svid::verify(&chain, &roots, TD, PeerRole::Server, t0()).is_ok());
    // Attestation through the issuer.
    let me = host(&root, "h1", &[], &roots);
    let att = h.attest(&NONCE, &me.peer_id());
    let got =
        trust_of(&root).verify_attestation(&att, &NONCE, &me.peer_id(), &h.peer_id(), t0()).expect("ok");
    assert_eq!(got.node_name, "h5");
}

#[test]
fn expired_host_certificate_is_refused() {
    let root = root();
    let a = host(&root, "h1", &[], &[root.cert_der()]);
    let later = t0() + DAY + Duration::from_secs(1);
    let att = a.attest(&NONCE, &a.peer_id());
    let err =
        trust_of(&root).verify_attestation(&att, &NONCE, &a.peer_id(), &a.peer_id(), later).expect_err("old");
    assert!(matches!(err, TrustError::Svid(SvidError::Expired { .. })), "{err}");
}

#[test]
fn garbage_and_oversized_attestations_are_refused() {
    let root = root();
    let a = host(&root, "h1", &[], &[root.cert_der()]);
    let trust = trust_of(&root);
    let run = |bytes: &[u8]| trust.verify_attestation(bytes, &NONCE, &a.peer_id(), &a.peer_id(), t0());
    for garbage in [
        &b""[..],
        b"\x01",
        b"\x02\x01",
        b"\x01\x00",
        b"\x01\x05",
        b"\x01\x01\x00\x00\x00\x09abc",
        &[0xff; 100],
    ] {
        assert!(matches!(run(garbage), Err(TrustError::MalformedAttestation(_))), "{garbage:?}");
    }
    let junk_cert = wire::encode(&[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])], &[0; 64]);
    assert!(run(&junk_cert).expect_err("junk").to_string().starts_with("malformed certificate"));
    let mut trailing = a.attest(&NONCE, &a.peer_id());
    trailing.push(0);
    assert_eq!(
        run(&trailing).expect_err("trailing").to_string(),
        "malformed attestation: 1 bytes after the signature"
    );
    let huge = vec![1u8; MAX_ATTESTATION + 1];
    assert_eq!(
        run(&huge).expect_err("huge").to_string(),
        "malformed attestation: 65537 bytes, at most 65536"
    );
}

#[test]
fn revoked_host_is_refused_and_a_reissued_one_admitted() {
    let root = root();
    let roots = [root.cert_der()];
    let (a, me) = (host(&root, "h1", &[], &roots), host(&root, "h2", &[], &roots));
    let trust = trust_of(&root);
    let revocation = Revocation {
        trust_domain: TD.into(),
        node: "h1".into(),
        peer: None,
        serial: None,
        revoked_at: (t0() + HOUR).duration_since(UNIX_EPOCH).expect("epoch").as_secs(),
    };
    let signed = SignedRevocation::sign(&revocation, &root).expect("signs");
    let pem = signed.to_pem();
    assert_eq!(
        trust.add_revocation(pem.as_bytes(), t0() + HOUR).expect("verifies"),
        Some(revocation.clone())
    );
    assert_eq!(trust.add_revocation(pem.as_bytes(), t0() + HOUR).expect("verifies"), None, "known");
    let att = a.attest(&NONCE, &me.peer_id());
    let err = trust
        .verify_attestation(&att, &NONCE, &me.peer_id(), &a.peer_id(), t0() + HOUR)
        .expect_err("revoked");
    assert!(matches!(err, TrustError::Revoked { ref node, .. } if node == "h1"), "{err}");
    // Other hosts are unaffected.
    assert!(trust
        .verify_attestation(&me.attest(&NONCE, &a.peer_id()), &NONCE, &a.peer_id(), &me.peer_id(), t0())
        .is_ok());

    // h1 issued again after the revocation, with a new key: a member again.
    let keypair = generate_keypair().expect("key");
    let cert = issue::host_cert(&root, "h1", &keypair.public(), t0() + 2 * HOUR, DAY).expect("cert");
    let again = HostIdentity::new(keypair, vec![cert], &roots, TD, t0() + 2 * HOUR).expect("identity");
    let att = again.attest(&NONCE, &me.peer_id());
    assert!(trust.verify_attestation(&att, &NONCE, &me.peer_id(), &again.peer_id(), t0() + 2 * HOUR).is_ok());
    // Revoking by key cuts that key whatever name and time.
    let by_key = Revocation { peer: Some(again.peer_id().to_string()), node: "h7".into(), ..revocation };
    trust
        .add_revocation(
            SignedRevocation::sign(&by_key, &root).expect("signs").to_pem().as_bytes(),
            t0() + 3 * HOUR,
        )
        .expect("ok");
    assert!(matches!(
        trust.verify_attestation(&att, &NONCE, &me.peer_id(), &again.peer_id(), t0() + 2 * HOUR),
        Err(TrustError::Revoked { .. })
    ));
    assert_eq!(trust.revocations().len(), 2);
}

#[test]
fn revocations_verify_only_from_our_root_or_its_issuers() {
    let root = root();
    let roots = [root.cert_der()];
    let at = t0().duration_since(UNIX_EPOCH).expect("epoch").as_secs();
    let rev =
        Revocation { trust_domain: TD.into(), node: "h1".into(), peer: None, serial: None, revoked_at: at };
    let now = t0() + HOUR;

    let issuer = issue::issuer_ca(&root, "ops", t0(), DAY).expect("issuer");
    let by_issuer = SignedRevocation::sign(&rev, &issuer).expect("signs").to_pem();
    assert_eq!(revoke::verify(by_issuer.as_bytes(), &roots, TD, now).expect("issuer ok"), rev);

    let stranger = Authority::generate(TD, t0(), DAY).expect("root");
    let foreign = SignedRevocation::sign(&rev, &stranger).expect("signs").to_pem();
    let err = revoke::verify(foreign.as_bytes(), &roots, TD, now).expect_err("foreign root");
    assert!(err.to_string().starts_with("invalid revocation: signed by spiffe://beemesh.local,"), "{err}");
    let foreign_issuer = issue::issuer_ca(&stranger, "ops", t0(), DAY).expect("issuer");
    let foreign = SignedRevocation::sign(&rev, &foreign_issuer).expect("signs").to_pem();
    let err = revoke::verify(foreign.as_bytes(), &roots, TD, now).expect_err("foreign issuer");
    assert!(err.to_string().contains("is not signed by the trust domain's root"), "{err}");
    let wca = issue::workload_ca(&root, "h1", t0(), DAY).expect("wca");
    assert!(matches!(SignedRevocation::sign(&rev, &wca), Err(TrustError::CannotIssue(_))));

    // Tampered payload: signature fails.
    let mut signed = SignedRevocation::sign(&rev, &root).expect("signs");
    signed.payload = serde_json::to_vec(&Revocation { node: "h2".into(), ..rev.clone() }).expect("json");
    let err = revoke::verify(signed.to_pem().as_bytes(), &roots, TD, now).expect_err("tampered");
    assert!(matches!(err, TrustError::BadSignature(_)), "{err}");

    // Another trust domain, the future, garbage.
    let other = Authority::generate("other.local", t0(), DAY).expect("root");
    let theirs =
        SignedRevocation::sign(&Revocation { trust_domain: "other.local".into(), ..rev.clone() }, &other)
            .expect("signs")
            .to_pem();
    assert!(revoke::verify(theirs.as_bytes(), &[root.cert_der(), other.cert_der()], TD, now)
        .expect_err("td")
        .to_string()
        .contains("for trust domain other.local"));
    let future = Revocation { revoked_at: at + 7200, ..rev.clone() };
    let err = revoke::verify(
        SignedRevocation::sign(&future, &root).expect("signs").to_pem().as_bytes(),
        &roots,
        TD,
        t0(),
    )
    .expect_err("future");
    assert!(err.to_string().contains("made in the future"), "{err}");
    assert!(matches!(revoke::verify(b"junk", &roots, TD, now), Err(TrustError::BadRevocation(_))));
    assert!(matches!(
        revoke::verify(&vec![b'a'; 70_000], &roots, TD, now),
        Err(TrustError::BadRevocation(_))
    ));
}

mod on_disk {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn ca_init_issue_host_and_load() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (ca_dir, state) = (tmp.path().join("ca"), tmp.path().join("state"));
        let ca = files::init_ca(&ca_dir, TD, t0()).expect("init");
        assert_eq!((mode(&ca_dir), mode(&ca_dir.join("ca.key"))), (0o700, 0o600));
        let err = files::init_ca(&ca_dir, TD, t0()).expect_err("twice");
        assert!(err.to_string().contains("ca.key: already exists"), "{err}");

        let ca = files::load_ca(&ca.dir, t0()).expect("loads");
        let peer = files::issue_host(&ca, "h1", &state, t0(), files::HOST_LIFETIME).expect("issues");
        let host = state.join("host");
        assert_eq!(
            (mode(&host), mode(&host.join("node.key")), mode(&host.join("workloads.key"))),
            (0o700, 0o600, 0o600)
        );
        assert!(ca_dir.join("hosts/h1.pem").exists());
        let err = files::issue_host(&ca, "h1", &state, t0(), DAY).expect_err("twice");
        assert!(err.to_string().contains("node.key: already exists"), "{err}");

        let creds = files::load_host(&state, TD, "ignored", t0() + HOUR).expect("loads");
        assert!(creds.issued);
        assert_eq!(creds.identity.peer_id(), peer);
        assert_eq!(creds.identity.node_name(), "h1");
        let web = "spiffe://beemesh.local/ns/shop/sa/web";
        let svid = creds.workloads.issue(web, t0() + HOUR, HOUR).expect("svid");
        let chain: Vec<_> =
            std::iter::once(svid.cert_der.clone()).chain(creds.workloads.chain().iter().cloned()).collect();
        assert_eq!(chain.len(), 2, "leaf + the host's workload issuer");
        assert_eq!(
            svid::verify(&chain, creds.workloads.bundle(), TD, PeerRole::Client, t0() + HOUR).expect("ok"),
            web
        );
        assert_eq!(creds.workloads.svid_chain_pem(&svid).matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(creds.workloads.bundle_pem(), ca.authority.cert_pem());

        // Another trust domain configured: the bundle file is named.
        let err = files::load_host(&state, "other.local", "x", t0()).expect_err("td");
        assert!(err.to_string().contains("host/bundle.pem: root spiffe://beemesh.local: the agent is configured for trust domain other.local"), "{err}");
        // A key readable by others is refused, naming it.
        std::fs::set_permissions(host.join("node.key"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = files::load_host(&state, TD, "x", t0()).expect_err("mode");
        assert!(err.to_string().contains("node.key: mode 644"), "{err}");
        std::fs::set_permissions(host.join("node.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        // A broken certificate file is named.
        std::fs::write(host.join("node.pem"), "junk").expect("write");
        let err = files::load_host(&state, TD, "x", t0()).expect_err("junk");
        assert!(err.to_string().contains("host/node.pem: "), "{err}");
        // Expired: named too.
        std::fs::remove_dir_all(&host).expect("rm");
        files::issue_host(&ca, "h1", &state, t0(), DAY).expect("issues");
        let err = files::load_host(&state, TD, "x", t0() + 2 * DAY).expect_err("expired");
        assert!(err.to_string().contains("host/node.pem: certificate expired at"), "{err}");
    }

    #[test]
    fn issuer_directory_issues_hosts_and_revokes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = files::init_ca(&tmp.path().join("root"), TD, t0()).expect("init");
        files::issue_issuer(&root, "ops", &tmp.path().join("ops"), t0()).expect("issuer");
        let ops = files::load_ca(&tmp.path().join("ops"), t0()).expect("loads issuer dir");
        assert_eq!(ops.chain.len(), 1);
        let state = tmp.path().join("state");
        files::issue_host(&ops, "h2", &state, t0(), DAY).expect("issues");
        let creds = files::load_host(&state, TD, "x", t0()).expect("loads");
        assert_eq!(creds.identity.chain().len(), 2, "host, issuer");
        let svid = creds.workloads.issue("spiffe://beemesh.local/ns/a/sa/b", t0(), HOUR).expect("svid");
        let chain: Vec<_> =
            std::iter::once(svid.cert_der.clone()).chain(creds.workloads.chain().iter().cloned()).collect();
        assert_eq!(chain.len(), 3, "leaf, workload issuer, issuer");
        assert!(svid::verify(&chain, creds.workloads.bundle(), TD, PeerRole::Client, t0()).is_ok());

        // Revoked by the issuer that made it: names its key and serial.
        let signed = files::revoke_host(&ops, "h2", t0()).expect("revokes");
        let path = tmp.path().join("ops/revocations/h2.pem");
        files::write_revocation(&path, &signed).expect("writes");
        let trust = HostTrust::new(TD, root.bundle.clone());
        let rev =
            trust.add_revocation(&std::fs::read(&path).expect("read"), t0()).expect("verifies").expect("new");
        assert_eq!(rev.peer, Some(creds.identity.peer_id().to_string()));
        assert!(rev.serial.is_some());
        assert!(matches!(trust.verify_host(creds.identity.chain(), t0()), Err(TrustError::Revoked { .. })));
        // The root revokes a host it never saw by name alone.
        let signed = files::revoke_host(&root, "h3", t0()).expect("revokes");
        assert_eq!(
            revoke::verify(signed.to_pem().as_bytes(), &root.bundle, TD, t0()).expect("ok").peer,
            None
        );

        // An issuer cannot make issuers; a workload issuer directory is refused.
        assert!(matches!(
            files::issue_issuer(&ops, "x", &tmp.path().join("x"), t0()),
            Err(TrustError::CannotIssue(_))
        ));
        std::fs::copy(state.join("host/workloads.pem"), tmp.path().join("ops/ca.pem")).expect("cp");
        std::fs::copy(state.join("host/workloads.key"), tmp.path().join("ops/ca.key")).expect("cp");
        let err = files::load_ca(&tmp.path().join("ops"), t0()).expect_err("wca");
        assert!(err.to_string().contains("ops/ca.pem: a host's workload issuer"), "{err}");
    }

    #[test]
    fn without_credentials_the_agent_is_a_mesh_of_one_with_a_stable_key() {
        let tmp = tempfile::tempdir().expect("tmp");
        let now = SystemTime::now();
        let first = files::load_host(tmp.path(), TD, "node-a", now).expect("self-made");
        assert!(!first.issued);
        assert_eq!(first.identity.node_name(), "node-a");
        assert!(first.workloads.chain().is_empty(), "the self-made root signs workloads directly");
        assert_eq!(mode(&tmp.path().join("ca/node.key")), 0o600);
        let again = files::load_host(tmp.path(), TD, "node-a", now).expect("self-made");
        assert_eq!(first.identity.peer_id(), again.identity.peer_id());
        assert_eq!(first.trust.roots(), again.trust.roots());
        let att = first.identity.attest(&NONCE, &again.identity.peer_id());
        assert!(again
            .trust
            .verify_attestation(&att, &NONCE, &again.identity.peer_id(), &first.identity.peer_id(), now)
            .is_ok());
    }
}
