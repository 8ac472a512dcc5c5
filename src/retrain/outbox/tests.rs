//! Unit tests of the outbox: appends, replay, torn writes, compaction.

use super::*;
use crate::retrain::{Event, EventData};

fn event(id: &str) -> Event {
    event_with(id, "drift")
}

/// Reasons are free text: these make records whose bytes are not all ASCII, so a cut
/// can fall inside a character.
const REASON: &str = "d\u{e9}rive \u{65e5}\u{672c} \u{1f980} \"quoted\" \\ end";

fn event_with(id: &str, reason: &str) -> Event {
    Event {
        kind: "vigil.drift.detected".into(),
        timestamp: "t".into(),
        data: EventData {
            event_id: id.into(),
            model: "m".into(),
            model_version: "1".into(),
            reason: reason.into(),
            window: None,
            drift_share: None,
            features: vec![],
            server: "s".into(),
            canary: None,
            quality: None,
            data: None,
        },
    }
}

#[test]
fn replays_and_compacts() {
    let dir = std::env::temp_dir().join(format!("vigil-outbox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut ob = Outbox::open(&dir).unwrap();
    for i in 0..(COMPACT_AFTER + 10) {
        ob.create(event(&format!("e{i}")), i as f64).unwrap();
    }
    ob.failed("e0", 1, "boom", 5.0).unwrap();
    ob.dead("e1", 3, "gone").unwrap();
    for i in 2..(COMPACT_AFTER + 5) {
        ob.delivered(&format!("e{i}")).unwrap();
    }
    // A torn last line (crash mid-write) is ignored.
    OpenOptions::new()
        .append(true)
        .open(dir.join("outbox.jsonl"))
        .unwrap()
        .write_all(b"{\"op\":\"cre")
        .unwrap();
    let ob = Outbox::open(&dir).unwrap();
    let e0 = ob.get("e0").unwrap();
    assert_eq!(
        (e0.state, e0.attempts, e0.next_attempt),
        (EventState::Pending, 1, 5.0)
    );
    assert_eq!(ob.get("e1").unwrap().state, EventState::Dead);
    let pending = ob
        .list()
        .iter()
        .filter(|r| r.state == EventState::Pending)
        .count();
    assert_eq!(pending, 1 + 5, "e0 and the five never delivered");
    assert!(
        ob.list()
            .iter()
            .filter(|r| r.state == EventState::Delivered)
            .count()
            <= KEEP_DELIVERED + 5
    );
    assert_eq!(ob.last_drift_event("m"), Some((COMPACT_AFTER + 9) as f64));
    assert_eq!(ob.next_due().unwrap().0, "e0");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-outbox-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn line(r: &Record) -> Vec<u8> {
    let mut l = serde_json::to_vec(r).unwrap();
    l.push(b'\n');
    l
}

fn ids(ob: &Outbox) -> Vec<String> {
    ob.list().into_iter().map(|r| r.id).collect()
}

/// A crash can cut the last record at any byte, inside a character too. For every cut:
/// the outbox opens, the next event is written on a line of its own, and every
/// acknowledged event is there after two more restarts.
#[test]
fn every_cut_of_a_torn_record_keeps_every_acknowledged_event() {
    let dir = temp_dir("cuts");
    let path = dir.join("outbox.jsonl");
    {
        let mut ob = Outbox::open(&dir).unwrap();
        ob.create(event_with("a", REASON), 1.0).unwrap();
        ob.failed("a", 1, REASON, 2.0).unwrap();
    }
    let base = std::fs::read(&path).unwrap();
    let torn = line(&Record::Create {
        event: Box::new(event_with("torn", REASON)),
        at: 3.0,
    });
    let mut inside_a_char = 0;
    for cut in 0..=torn.len() {
        if std::str::from_utf8(&torn[..cut]).is_err() {
            inside_a_char += 1;
        }
        let mut bytes = base.clone();
        bytes.extend_from_slice(&torn[..cut]);
        std::fs::write(&path, &bytes).unwrap();
        let mut ob = Outbox::open(&dir)
            .unwrap_or_else(|e| panic!("cut at {cut}: the outbox does not open: {e}"));
        ob.create(event_with("c", REASON), 4.0).unwrap();
        drop(ob);
        let want: &[&str] = if cut == torn.len() {
            &["a", "torn", "c"] // complete: it had been acknowledged
        } else {
            &["a", "c"]
        };
        for restart in 0..2 {
            let ob = Outbox::open(&dir).unwrap();
            assert_eq!(
                ids(&ob),
                want,
                "cut at {cut} of {}, restart {restart}",
                torn.len()
            );
            let c = ob.get("c").unwrap();
            assert_eq!(c.event.data.reason, REASON);
            assert_eq!(ob.get("a").unwrap().attempts, 1);
        }
        if cut < torn.len() {
            let mut clean = base.clone();
            clean.extend(line(&Record::Create {
                event: Box::new(event_with("c", REASON)),
                at: 4.0,
            }));
            assert_eq!(std::fs::read(&path).unwrap(), clean, "cut at {cut}");
        }
    }
    assert!(inside_a_char >= 6, "some cuts fall inside a character");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Damage inside the log (not at its end) is skipped and counted in the log; the
/// records around it, and the next one written, are kept.
#[test]
fn corrupt_records_inside_the_log_are_skipped() {
    let dir = temp_dir("corrupt");
    let mut bytes = line(&Record::Create {
        event: Box::new(event_with("a", REASON)),
        at: 1.0,
    });
    bytes.extend_from_slice(b"{\"op\":\"create\",\"ev\n");
    bytes.extend_from_slice(b"\xff\xfe\x00 not json \xe6\x97\n");
    bytes.extend(line(&Record::Create {
        event: Box::new(event_with("b", REASON)),
        at: 2.0,
    }));
    // A complete but unparseable last line is part of the tail: cut.
    bytes.extend_from_slice(b"{\"op\":\"deliver\",\"id\":\"a\"\n");
    std::fs::write(dir.join("outbox.jsonl"), &bytes).unwrap();
    let mut ob = Outbox::open(&dir).unwrap();
    assert_eq!(ids(&ob), ["a", "b"]);
    assert_eq!(ob.get("a").unwrap().state, EventState::Pending);
    ob.create(event("c"), 3.0).unwrap();
    drop(ob);
    for _ in 0..2 {
        assert_eq!(ids(&Outbox::open(&dir).unwrap()), ["a", "b", "c"]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A write that fails half-way (a full disk) is truncated back before the error is
/// returned: the event was not acknowledged, and the next one is not lost on its
/// remains. If the truncation fails too, the next append cuts first.
#[test]
fn a_failed_append_rolls_back() {
    let dir = temp_dir("rollback");
    let path = dir.join("outbox.jsonl");
    let mut ob = Outbox::open(&dir).unwrap();
    ob.create(event_with("a", REASON), 1.0).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    ob.faults.write_after = Some(40);
    assert!(ob.create(event_with("b", REASON), 2.0).is_err());
    assert!(!ob.knows("b"), "not acknowledged, not applied");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "rolled back");
    ob.create(event_with("c", REASON), 3.0).unwrap();
    // Delivery bookkeeping goes through the same path.
    ob.faults.write_after = Some(7);
    assert!(ob.failed("a", 1, "x", 9.0).is_err());
    assert_eq!(ob.get("a").unwrap().attempts, 0);
    // The roll-back fails as well: the bytes stay until the next append cuts them.
    ob.faults.write_after = Some(25);
    ob.faults.truncate = true;
    assert!(ob.create(event("d"), 4.0).is_err());
    assert!(std::fs::metadata(&path).unwrap().len() > len);
    ob.create(event_with("e", REASON), 5.0).unwrap();
    drop(ob);
    for _ in 0..2 {
        let ob = Outbox::open(&dir).unwrap();
        assert_eq!(ids(&ob), ["a", "c", "e"]);
        assert_eq!(ob.get("a").unwrap().attempts, 0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A compaction that cannot open its new log leaves the old one in place and in use:
/// events written after it survive a restart. The next compaction succeeds.
#[test]
fn a_failed_compaction_keeps_the_old_log() {
    let dir = temp_dir("compact");
    let mut ob = Outbox::open(&dir).unwrap();
    for i in 0..COMPACT_AFTER {
        ob.create(event(&format!("e{i}")), i as f64).unwrap();
    }
    for i in 0..COMPACT_AFTER - 1 {
        ob.delivered(&format!("e{i}")).unwrap();
    }
    ob.faults.compact_open = true;
    let last = format!("e{}", COMPACT_AFTER - 1);
    ob.delivered(&last).unwrap();
    assert_eq!(ob.list().len(), COMPACT_AFTER, "nothing compacted away");
    assert!(!dir.join("outbox.jsonl.tmp").exists());
    ob.create(event_with("after", REASON), 1e6).unwrap();
    drop(ob);
    let mut ob = Outbox::open(&dir).unwrap();
    assert!(ob.knows("after"), "written to the log under the name");
    assert_eq!(ob.get(&last).unwrap().state, EventState::Delivered);
    ob.create(event("f0"), 1e6 + 1.0).unwrap();
    ob.delivered("f0").unwrap(); // compacts now
    assert_eq!(ob.list().len(), KEEP_DELIVERED + 1);
    ob.create(event_with("later", REASON), 1e6 + 2.0).unwrap();
    drop(ob);
    let ob = Outbox::open(&dir).unwrap();
    assert!(ob.knows("after") && ob.knows("later") && ob.knows("f0"));
    assert_eq!(ob.get("after").unwrap().state, EventState::Pending);
    std::fs::remove_dir_all(&dir).unwrap();
}
