//! The wire types' JSON forms and the sampling rules.

use super::*;

#[test]
fn prompt_version_names_round_trip() {
    for v in PromptVersion::ALL {
        assert_eq!(v.as_str().parse::<PromptVersion>(), Ok(v));
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            format!("\"{}\"", v.as_str())
        );
    }
    assert!("chat-old".parse::<PromptVersion>().is_err());
}

#[test]
fn defaults_are_the_web_demo_ones() {
    let s = Sampling::default();
    assert_eq!(
        (s.temperature, s.top_p, s.top_k, s.max_length),
        (0.8, 0.4, Some(10), 2048)
    );
}

#[test]
fn top_k_zero_and_absent_are_both_off_and_one_is_greedy() {
    let with = |top_k| Sampling {
        top_k,
        temperature: 1.0,
        ..Sampling::default()
    };
    assert_eq!(with(None).top_k_limit(), None);
    assert_eq!(with(Some(0)).top_k_limit(), None);
    assert!(!with(Some(0)).is_greedy() && !with(None).is_greedy());
    assert!(with(Some(1)).is_greedy());
    for k in [None, Some(0), Some(1), Some(50)] {
        assert_eq!(with(k).validate(), Ok(()), "{k:?}");
    }
    // `null` and a missing-in-JSON 0 decode to the same settings as the page sends.
    let json = serde_json::to_string(&with(None)).unwrap();
    assert!(json.contains("\"top_k\":null"), "{json}");
}

/// A field name and an edit that puts it out of range.
type BadValue = (&'static str, fn(&mut Sampling));

#[test]
fn one_rule_set_names_the_field() {
    let cases: [BadValue; 7] = [
        ("temperature", |s| s.temperature = f64::NAN),
        ("temperature", |s| s.temperature = 2.5),
        ("top_p", |s| s.top_p = 0.0),
        ("max_length", |s| s.max_length = 0),
        ("max_new_tokens", |s| s.max_new_tokens = Some(0)),
        ("repetition_penalty", |s| s.repetition_penalty = 0.0),
        ("repetition_penalty", |s| s.repetition_penalty = 11.0),
    ];
    for (field, edit) in cases {
        let mut s = Sampling::default();
        edit(&mut s);
        let err = s.validate().unwrap_err();
        assert_eq!(err.field, field);
        assert!(err.message.contains(field), "{}", err.message);
    }
    assert_eq!(Sampling::default().validate(), Ok(()));
    for kind in ModelKind::ALL {
        assert_eq!(Sampling::for_kind(kind).validate(), Ok(()));
    }
    assert_ne!(
        Sampling::for_kind(ModelKind::CogAgent),
        Sampling::for_kind(ModelKind::CogVlm)
    );
    assert_eq!(Sampling::greedy().validate(), Ok(()));
    assert!(Sampling::greedy().is_greedy());
}

#[test]
fn an_error_event_keeps_its_kind_on_the_wire() {
    let e = Event::from(Error::new(ErrorKind::Busy, "busy"));
    let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert_eq!(back, e);
    // An error event without a kind (an older peer) is an internal one.
    let old: Event = serde_json::from_str(r#"{"Error":{"message":"x"}}"#).unwrap();
    assert_eq!(old, Event::error(ErrorKind::Internal, "x"));
}
