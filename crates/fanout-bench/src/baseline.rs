//! The baseline: what a plain client loop does with the same budget as the
//! controller — the same N creates of the same Secret, at most
//! `--fanout-concurrency` in flight, through a client behind the same
//! `RateLimitLayer` with the same QPS/burst — and nothing else: no watch, no
//! cache, no status, no retries. The fastest the API server lets those
//! writes go under those limits; the controller is measured against it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::world::{baseline_copy, target};

/// Creates Secret `name` (labelled `run`) in target namespaces 0..n with
/// `client`, `concurrency` at a time; returns first request to last answer.
pub async fn create_copies(
    client: &Client,
    n: usize,
    concurrency: usize,
    name: &str,
    run: &str,
) -> Result<Duration> {
    let secrets: Vec<Secret> = (0..n)
        .map(|i| baseline_copy(name, run, &target(i)))
        .collect();
    let started = Instant::now();
    stream::iter(secrets)
        .map(|secret| {
            let client = client.clone();
            async move {
                let namespace = secret.metadata.namespace.clone().unwrap_or_default();
                Api::<Secret>::namespaced(client, &namespace)
                    .create(&PostParams::default(), &secret)
                    .await
                    .with_context(|| format!("baseline create in {namespace}"))
            }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(started.elapsed())
}

/// [`create_copies`], but a create answered 429 (API Priority and Fairness)
/// is retried after a second, as client-go does without a Retry-After;
/// returns the time and how many 429s there were.
pub async fn create_copies_retrying(
    client: &Client,
    n: usize,
    concurrency: usize,
    name: &str,
    run: &str,
) -> Result<(Duration, u64)> {
    let secrets: Vec<Secret> = (0..n)
        .map(|i| baseline_copy(name, run, &target(i)))
        .collect();
    let throttled = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    stream::iter(secrets)
        .map(|secret| {
            let client = client.clone();
            let throttled = &throttled;
            async move {
                let namespace = secret.metadata.namespace.clone().unwrap_or_default();
                let api = Api::<Secret>::namespaced(client, &namespace);
                loop {
                    match api.create(&PostParams::default(), &secret).await {
                        Ok(_) => return Ok(()),
                        Err(kube::Error::Api(status)) if status.code == 429 => {
                            throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("baseline create in {namespace}"));
                        }
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok((started.elapsed(), throttled.into_inner()))
}
