//! `CallEligibility`: the facts signaling decides a call on. Profiles come
//! into being the way they do in production — auth's events appended to
//! `events:auth` as its outbox relay does, consumed by the profile worker —
//! and blocks through the service's own `Block` RPC.

use crate::common;

use common::{Harness, WAIT};
use unilink_events::payload::{USER_DEACTIVATED, USER_DELETED, USER_REGISTERED, USER_VERIFIED};
use unilink_proto::profile::CallEligibilityReply;
use unilink_test_support::eventually;

#[tokio::test]
async fn a_verified_active_receiver_is_available_with_both_usernames() {
    let h = Harness::start().await;
    let [ana, ben] = h.accounts(["ana_k", "ben_o"]).await;

    let reply = h.eligibility(&ana, &ben).await.unwrap();
    assert_eq!(
        reply,
        CallEligibilityReply {
            receiver_available: true,
            blocked: false,
            caller_username: "ana_k".to_owned(),
            receiver_username: "ben_o".to_owned(),
        }
    );

    // A caller without a profile (yet) is not an error: an empty username.
    let stranger = uuid::Uuid::new_v4().to_string();
    let reply = h.eligibility(&stranger, &ben).await.unwrap();
    assert_eq!(reply.caller_username, "");
    assert_eq!(reply.receiver_username, "ben_o");
    assert!(reply.receiver_available);
    assert!(!reply.blocked);
    h.stop().await;
}

#[tokio::test]
async fn an_unknown_or_deleted_receiver_is_not_found_and_bad_ids_are_invalid() {
    let h = Harness::start().await;
    let ana = h.account("ana_k", true).await;

    let unknown = h
        .eligibility(&ana, &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let ben = h.account("ben_o", true).await;
    h.delete(&ben).await;
    let deleted = h.eligibility(&ana, &ben).await.unwrap_err();
    assert_eq!(deleted.code(), tonic::Code::NotFound);

    for (caller, receiver) in [(ana.as_str(), "not-a-uuid"), ("", ana.as_str())] {
        let invalid = h.eligibility(caller, receiver).await.unwrap_err();
        assert_eq!(
            invalid.code(),
            tonic::Code::InvalidArgument,
            "{caller:?} -> {receiver:?}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn a_block_in_either_direction_is_reported() {
    let h = Harness::start().await;
    let [ana, ben, cai] = h.accounts(["ana_k", "ben_o", "cai_l"]).await;

    // Ana blocked Ben: blocked whoever calls whom.
    h.block(&ana, &ben).await;
    assert!(
        h.eligibility(&ana, &ben).await.unwrap().blocked,
        "caller blocked the receiver"
    );
    assert!(
        h.eligibility(&ben, &ana).await.unwrap().blocked,
        "receiver blocked the caller"
    );

    // The block concerns those two only.
    assert!(!h.eligibility(&cai, &ben).await.unwrap().blocked);
    assert!(!h.eligibility(&ana, &cai).await.unwrap().blocked);

    // Facts, not a verdict: the usernames and availability still come back.
    let reply = h.eligibility(&ben, &ana).await.unwrap();
    assert_eq!(reply.caller_username, "ben_o");
    assert_eq!(reply.receiver_username, "ana_k");
    assert!(reply.receiver_available);
    h.stop().await;
}

#[tokio::test]
async fn an_unverified_or_deactivated_receiver_is_not_available() {
    let h = Harness::start().await;
    let ana = h.account("ana_k", true).await;
    let unverified = h.account("ben_o", false).await;
    let deactivated = h.account("cai_l", true).await;
    h.deactivate(&deactivated).await;

    let reply = h.eligibility(&ana, &unverified).await.unwrap();
    assert!(!reply.receiver_available, "unverified");
    assert_eq!(reply.receiver_username, "ben_o");

    let reply = h.eligibility(&ana, &deactivated).await.unwrap();
    assert!(!reply.receiver_available, "deactivated");
    assert_eq!(reply.receiver_username, "cai_l");
    assert!(!reply.blocked);

    // Availability is about the receiver only: an unverified caller may ask.
    assert!(h.eligibility(&unverified, &ana).await.unwrap().receiver_available);
    h.stop().await;
}

#[tokio::test]
async fn a_replay_of_a_deleted_accounts_events_brings_nothing_back() {
    let h = Harness::start().await;
    let gone = h.account("dee_p", true).await;
    h.deactivate(&gone).await;
    h.delete(&gone).await;
    // Its username is free again, and taken by a new account.
    let heir = h.account("dee_p", true).await;

    // Auth's outbox replays its events (Redis lost the stream): the account's
    // registration, verification, deactivation and deletion, in that order…
    let registered =
        format!(r#"{{"user_id":"{gone}","email":"dee_p@uni.test","username":"dee_p","full_name":"dee_p"}}"#);
    h.emit(USER_REGISTERED, registered).await;
    h.emit(USER_VERIFIED, format!(r#"{{"user_id":"{gone}"}}"#)).await;
    h.emit(USER_DEACTIVATED, format!(r#"{{"user_id":"{gone}"}}"#)).await;
    h.emit(USER_DELETED, format!(r#"{{"user_id":"{gone}","email":"x@uni.test"}}"#))
        .await;
    // …or only the later ones, the registration being past the outbox's retention.
    h.emit(USER_VERIFIED, format!(r#"{{"user_id":"{gone}"}}"#)).await;
    h.emit(USER_DEACTIVATED, format!(r#"{{"user_id":"{gone}"}}"#)).await;
    // A later account shows that the worker is past all of them.
    h.account("eve_q", true).await;

    assert!(h.profile(&gone).await.is_none(), "the erased profile stays erased");
    let profile = h.profile(&heir).await.expect("the new account's profile");
    assert_eq!(profile.username, "dee_p");
    // Every replayed event was done with, none left to retry for ever.
    eventually("every entry to be acknowledged", WAIT, || async {
        (h.unacknowledged().await == 0).then_some(())
    })
    .await;
    h.stop().await;
}
