//! Key rotation: the customer's recipients change (old snapshots stay
//! readable with the old identity, new ones with the new identity only), and
//! the agent's signing key is rotated, then the old one revoked: what it
//! signs after its revocation is refused.
use std::process::Command;

use bascule_tests::{bin, edit, ok, run, text, Scenario};

#[test]
fn rotated_recipients_and_a_revoked_agent_key() {
    let s = Scenario::start(1_000);
    let first = s.snapshot();
    assert!(first.status.success(), "{}", text(&first));
    let first = Scenario::snapshot_name(&first);

    // the customer rotates its age key: new snapshots are sealed to the new recipient
    let new_key = s.path("customer-2026.key");
    let new_recipient = ok(Command::new(bin("bascule-agent")).arg("new-identity").arg("--out").arg(&new_key)).trim().to_string();
    edit(&s.path("agent.yaml"), &s.recipient, &new_recipient);
    s.pg.psql("mairie", "INSERT INTO citoyens (nom) VALUES ('Rotation')");
    let second = s.snapshot();
    assert!(second.status.success(), "{}", text(&second));
    let second = Scenario::snapshot_name(&second);
    // nothing sealed to the old recipient is reused: the new snapshot stands on its own
    let listed = text(&run(&mut s.controller(&["snapshots"])));
    let row = |name: &str| listed.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} not in\n{listed}")).to_string();
    assert!(row(&first).contains(&s.recipient[..8]) && row(&first).ends_with(&s.recipient[s.recipient.len() - 4..]), "{listed}");
    assert!(row(&second).ends_with(&new_recipient[new_recipient.len() - 4..]), "{listed}");
    let restore = |snap: &str, db: &str, key: &std::path::Path| s.restore(snap, db, key);
    assert!(restore(&first, "first_old_key", &s.path("customer.key")).status.success(), "the old snapshot opens with the old identity");
    let r = restore(&second, "second_new_key", &new_key);
    assert!(r.status.success(), "the new snapshot opens with the new identity:\n{}", text(&r));
    assert_eq!(s.pg.data_fingerprint("mairie"), s.pg.data_fingerprint("second_new_key"));
    let r = restore(&second, "second_old_key", &s.path("customer.key"));
    assert!(!r.status.success(), "the old identity cannot open the new snapshot:\n{}", text(&r));

    // the agent's signing key is rotated: a new key from now, the old one revoked now
    let old_verify = s.verify_key.clone();
    let new_agent_key = s.path("agent-2026.key");
    let new_verify = ok(Command::new(bin("bascule-agent")).arg("keygen").arg("--out").arg(&new_agent_key)).trim().to_string();
    if bascule_tests::is_root() {
        ok(Command::new("chown").arg("postgres").arg(&new_agent_key));
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    edit(
        &s.path("controller.yaml"),
        &format!("verify_keys: [\"{old_verify}\"]"),
        &format!(
            "verify_keys:\n      - {{ key: \"{old_verify}\", revoked_at: {at} }}\n      - {{ key: \"{new_verify}\", valid_from: {at} }}"
        ),
    );
    edit(&s.path("agent.yaml"), &format!("key_file: {}", s.path("agent.key").display()), &format!("key_file: {}", new_agent_key.display()));
    let third = s.snapshot();
    assert!(third.status.success(), "{}", text(&third));
    let v = run(&mut s.controller(&["verify"]));
    assert!(v.status.success(), "snapshots signed before the revocation and after the rotation verify:\n{}", text(&v));

    // the revoked key signs again (a stolen key): refused
    edit(&s.path("agent.yaml"), &format!("key_file: {}", new_agent_key.display()), &format!("key_file: {}", s.path("agent.key").display()));
    let fourth = s.snapshot();
    assert!(fourth.status.success(), "{}", text(&fourth));
    let fourth = Scenario::snapshot_name(&fourth);
    let v = run(&mut s.controller(&["verify"]));
    let out = text(&v);
    assert!(!v.status.success() && out.contains(&fourth) && out.contains("revoked"), "{out}");
    let r = restore(&fourth, "fourth", &new_key);
    assert!(!r.status.success() && text(&r).contains("revoked"), "{}", text(&r));
}

#[test]
fn a_backdated_head_from_a_revoked_key_is_refused_and_moves_no_mark() {
    let s = Scenario::start(200);
    let o = s.snapshot();
    assert!(o.status.success(), "{}", text(&o));
    let v = run(&mut s.controller(&["verify"]));
    assert!(v.status.success(), "{}", text(&v));
    let mark_file = |p: &str| s.path(&format!("controller-state/{}@{p}.head-seen", s.tenant));
    let marks = || (std::fs::read_to_string(mark_file("provider-a")).unwrap(), std::fs::read_to_string(mark_file("provider-b")).unwrap());
    let before = marks();

    // rotation: the old key revoked from now, the new one valid from now
    let old_verify = s.verify_key.clone();
    let new_agent_key = s.path("agent-new.key");
    let new_verify = ok(Command::new(bin("bascule-agent")).arg("keygen").arg("--out").arg(&new_agent_key)).trim().to_string();
    if bascule_tests::is_root() {
        ok(Command::new("chown").arg("postgres").arg(&new_agent_key));
    }
    let at = chrono::Utc::now();
    let at_text = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    edit(
        &s.path("controller.yaml"),
        &format!("verify_keys: [\"{old_verify}\"]"),
        &format!("verify_keys:\n      - {{ key: \"{old_verify}\", revoked_at: {at_text} }}\n      - {{ key: \"{new_verify}\", valid_from: {at_text} }}"),
    );
    let v = run(&mut s.controller(&["verify"]));
    assert!(v.status.success(), "the old key's HEAD, signed before its revocation, still verifies:\n{}", text(&v));

    // the thief signs a HEAD with the stolen key, dated before the revocation, with a huge sequence
    let stolen = bascule_core::keys::AgentKey::load(&s.path("agent.key")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (a, b) = (s.provider(&s.a), s.provider(&s.b));
    let good = rt.block_on(a.get("HEAD", u64::MAX)).unwrap().unwrap();
    let mut body: serde_json::Value = serde_json::from_slice(&good[good.windows(2).position(|w| w == b"\n\n").unwrap() + 2..]).unwrap();
    body["sequence"] = 1_000_000_000u64.into();
    body["agent_time"] = (at - chrono::Duration::seconds(30)).to_rfc3339().into();
    let forged = bascule_core::signed::sign(bascule_core::signed::Kind::Head, &body, &stolen);
    for r in [&a, &b] {
        rt.block_on(r.put("HEAD", forged.clone().into())).unwrap();
    }
    let v = run(&mut s.controller(&["verify"]));
    let out = text(&v);
    assert!(!v.status.success() && out.contains("revoked") && out.contains("signs nothing new"), "{out}");
    assert_eq!(marks(), before, "the refused HEAD moved no rollback mark");

    // the agent, on its new key, commits: its genuine HEAD is accepted
    edit(&s.path("agent.yaml"), &format!("key_file: {}", s.path("agent.key").display()), &format!("key_file: {}", new_agent_key.display()));
    let o = s.snapshot();
    assert!(o.status.success(), "{}", text(&o));
    let v = run(&mut s.controller(&["verify"]));
    assert!(v.status.success(), "the new key's HEAD verifies after the forged one:\n{}", text(&v));
}
