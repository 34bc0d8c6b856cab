//! `referral-load serve`: the whole pipeline on this machine for another tool (an API fuzzer,
//! a browser test) to run against; stopped when that tool ends.
//!
//! The tool gets the addresses and an admin token in its environment, and the run fails when
//! the tool fails or when a service logged an ERROR line meanwhile: bad input is a 4xx for
//! the client, never an error for the operator.

use std::process::ExitCode;

use crate::pipeline::{Pipeline, PipelineOptions, Topology};

type Result<T, E = String> = std::result::Result<T, E>;

/// Starts the pipeline in `topology`, runs `command` with `REFERRAL_API_URL`,
/// `REFERRAL_INGEST_URL` and `REFERRAL_API_TOKEN` set, stops the pipeline.
pub async fn serve(topology: Topology, command: Vec<String>) -> Result<ExitCode> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "serve needs a command to run".to_owned())?;
    let pipeline = Pipeline::start(&PipelineOptions {
        topology,
        partitions: 3,
        aggregator_env: Vec::new(),
        durable_broker: false,
    })
    .await?;
    eprintln!(
        "referral-load serve: pipeline up ({:?}); API at {}, edge at {}",
        pipeline.topology,
        pipeline.api_url(),
        pipeline.ingest_url()
    );
    let mut child = std::process::Command::new(program);
    child
        .args(args)
        .env("REFERRAL_API_URL", pipeline.api_url())
        .env("REFERRAL_INGEST_URL", pipeline.ingest_url())
        .env("REFERRAL_API_TOKEN", pipeline.api_token());
    let status = tokio::task::spawn_blocking(move || child.status())
        .await
        .map_err(|error| format!("waiting for {program}: {error}"))?
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    let errors = pipeline.logged_errors();
    pipeline.stop();
    for line in &errors {
        eprintln!("referral-load serve: a service logged an error: {line}");
    }
    Ok(if status.success() && errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        if !status.success() {
            eprintln!("referral-load serve: {program} failed ({status})");
        }
        ExitCode::FAILURE
    })
}
