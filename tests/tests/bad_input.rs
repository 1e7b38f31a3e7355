//! Bad input is data: whatever lands on the submit exchange ends in `rejected` with a reason,
//! unchanged, and nothing stops.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use serde_json::json;
use warren_common::message::header_str;
use warren_common::{HEADER_REASON, Status};
use warren_tests::{Handlers, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_submissions_are_rejected_with_reasons_and_the_dispatcher_lives_on()
-> anyhow::Result<()> {
    let env = TestEnv::new("badinput").await?;
    let dispatcher = env.dispatcher();
    let worker = env.worker("w", 2, Handlers::new());
    let mut replies = env.reply_queue().await?;
    let cases: Vec<(&[u8], &str)> = vec![
        (b"this is not json", "body: not valid JSON"),
        (b"", "body: not valid JSON"),
        (&[0xff, 0xfe, 0x00], "body: not UTF-8"),
        (b"[1, 2, 3]", "body: must be a JSON object, got an array"),
        (b"\"echo\"", "body: must be a JSON object, got a string"),
        (b"{\"payload\": 1}", "field `kind`: required"),
        (b"{\"kind\": 5}", "field `kind`: must be a string"),
        (b"{\"kind\": \"has spaces\"}", "field `kind`: must be 1"),
        (
            b"{\"kind\": \"echo\", \"priority\": 12}",
            "field `priority`: must be an integer 0",
        ),
        (
            b"{\"kind\": \"echo\", \"priority\": -1}",
            "field `priority`",
        ),
        (
            b"{\"kind\": \"echo\", \"priority\": \"high\"}",
            "field `priority`",
        ),
        (
            b"{\"kind\": \"echo\", \"max_attempts\": 0}",
            "field `max_attempts`",
        ),
        (
            b"{\"kind\": \"echo\", \"timeout_ms\": \"soon\"}",
            "field `timeout_ms`",
        ),
        (
            b"{\"kind\": \"echo\", \"deadline\": \"next week\"}",
            "field `deadline`",
        ),
        (
            b"{\"kind\": \"echo\", \"requires\": [\"gpu\", 3]}",
            "field `requires[1]`",
        ),
        (
            b"{\"kind\": \"echo\", \"id\": 42}",
            "field `id`: must be a string",
        ),
        (
            b"{\"kind\": \"echo\", \"id\": \"\"}",
            "field `id`: must be 1",
        ),
        (b"{\"kind\": \"\"}", "field `kind`: must be 1"),
        (b"{\"kind\": \"a/b\"}", "field `kind`: must be 1"),
        (b"{\"kind\": null}", "field `kind`: required"),
        (b"{\"kind\": [\"echo\"]}", "field `kind`: must be a string"),
        (
            b"{\"kind\": \"echo\", \"kind\": \"fail\"}",
            "body: key \"kind\" appears more than once",
        ),
        (
            b"{\"kind\": \"echo\", \"priority\": 5.5}",
            "field `priority`",
        ),
        (
            b"{\"kind\": \"echo\", \"max_attempts\": 1001}",
            "field `max_attempts`",
        ),
        (
            b"{\"kind\": \"echo\", \"timeout_ms\": 0}",
            "field `timeout_ms`",
        ),
        (
            b"{\"kind\": \"echo\", \"estimated_ms\": -5}",
            "field `estimated_ms`",
        ),
        (
            b"{\"kind\": \"echo\", \"deadline\": 1700000000}",
            "field `deadline`: must be an RFC 3339 string",
        ),
        (
            b"{\"kind\": \"echo\", \"requires\": \"gpu\"}",
            "field `requires`: must be an array",
        ),
        (b"{\"kind\": \"echo\", \"cost\": 0}", "field `cost`"),
        (b"{\"kind\": \"echo\"", "body: not valid JSON"),
        (b"{\"kind\": \"echo\"} trailing", "body: not valid JSON"),
        (b"null", "body: must be a JSON object, got null"),
        (b"42", "body: must be a JSON object, got a number"),
        (b"{\"kind\": \"\xff\"}", "body: not UTF-8"),
    ];
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    for (i, (body, _)) in cases.iter().enumerate() {
        let properties = BasicProperties::default()
            .with_message_id(format!("bad-{i}").as_str().into())
            .with_reply_to(replies.name.as_str().into());
        env.publish_raw(body, properties).await?;
    }
    let bad_ids: Vec<String> = (0..cases.len()).map(|i| format!("bad-{i}")).collect();
    let results = replies.collect(&bad_ids, Duration::from_secs(30)).await?;
    for (i, (_, reason)) in cases.iter().enumerate() {
        let result = &results[&bad_ids[i]][0];
        assert_eq!(result.status, Status::Rejected, "case {i}");
        let error = result.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with(reason),
            "case {i}: {error:?} should start with {reason:?}"
        );
    }

    // Every one of them sits in the rejected queue, bytes unchanged, with the reason.
    let mut found = 0;
    while let Some(message) = env
        .channel
        .basic_get(
            env.topology.rejected_queue().as_str().into(),
            BasicGetOptions::default(),
        )
        .await?
    {
        let delivery = &message.delivery;
        let id = delivery
            .properties
            .message_id()
            .clone()
            .unwrap()
            .to_string();
        let index: usize = id.trim_start_matches("bad-").parse()?;
        assert_eq!(delivery.data, cases[index].0, "{id} body unchanged");
        let reason = header_str(&delivery.properties, HEADER_REASON).unwrap_or_default();
        assert!(reason.starts_with(cases[index].1), "{id}: {reason}");
        delivery.ack(BasicAckOptions::default()).await?;
        found += 1;
    }
    assert_eq!(found, cases.len());

    // The dispatcher is still there: a valid task completes.
    env.submit(
        json!({"id": "good", "kind": "echo", "payload": "still alive"}),
        &replies.name,
    )
    .await?;
    let good = replies
        .collect(&["good".into()], Duration::from_secs(30))
        .await?;
    assert_eq!(good["good"][0].status, Status::Succeeded);
    assert_eq!(good["good"][0].result, json!("still alive"));
    worker.stop().await?;
    dispatcher.stop().await?;
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_input_leaves_the_dispatcher_memory_flat() -> anyhow::Result<()> {
    use warren_tests::Process;
    let env = TestEnv::new("flood").await?;
    let mut dispatcher = Process::start(&env, "warren-dispatcher", &[])?;
    let pid = dispatcher.child.id().expect("running");
    let rss_kib = || -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or("VmRSS: 0 kB");
        Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
    };
    let bad: [&[u8]; 6] = [
        b"not json",
        b"[1]",
        b"{\"kind\": 5}",
        b"{\"kind\": \"a\", \"kind\": \"b\"}",
        &[0xff; 64],
        b"{\"kind\": \"echo\", \"priority\": 99}",
    ];
    let flood = |rounds: usize| {
        let env = &env;
        async move {
            let mut confirms = Vec::new();
            for _ in 0..rounds {
                for body in bad {
                    let confirm = env
                        .channel
                        .basic_publish(
                            env.topology.submit_exchange().as_str().into(),
                            "task".into(),
                            Default::default(),
                            body,
                            BasicProperties::default(),
                        )
                        .await?;
                    confirms.push(confirm);
                }
            }
            for confirm in confirms {
                confirm.await?;
            }
            anyhow::Ok(())
        }
    };
    let rejected = env.topology.rejected_queue();
    flood(200).await?;
    warren_tests::wait_for(
        "the first flood to be rejected",
        Duration::from_secs(60),
        || async { env.depth(&rejected).await.unwrap_or(0) >= 1200 },
    )
    .await?;
    let before = rss_kib()?;
    flood(1000).await?;
    warren_tests::wait_for(
        "the second flood to be rejected",
        Duration::from_secs(120),
        || async { env.depth(&rejected).await.unwrap_or(0) >= 7200 },
    )
    .await?;
    let after = rss_kib()?;
    eprintln!("dispatcher RSS {before} KiB after 1,200 rejections, {after} KiB after 7,200");
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    dispatcher.terminate()?;
    dispatcher.wait(Duration::from_secs(30)).await?;
    env.cleanup().await
}
