//! Sinks: each reads its batches from the pipeline, delivers them, and acknowledges what it
//! delivered. A plain enum, not a plugin registry: the set of sinks is small and known.

pub mod batch;
pub mod cloudwatch;
pub mod deadletter;
pub mod elasticsearch;
pub mod file;
pub mod null;
pub mod retry;
pub mod set;
pub mod stdout;
// Name templates moved to the crate root (config parses them, and config must not depend
// on the sinks); the old path stays so that the sinks' imports read as before.
pub use crate::template;

use crate::config::{SinkConfig, SinkKind};
use crate::metrics::Metrics;
use crate::pipeline::SinkReader;
use std::sync::Arc;

/// What every sink run loop gets.
pub struct SinkContext {
    pub name: String,
    pub reader: SinkReader,
    pub metrics: Arc<Metrics>,
    /// The process's AWS loader: sinks that talk to AWS share its configuration and
    /// credentials.
    pub aws: Arc<crate::aws::Aws>,
}

impl SinkContext {
    /// A sink named `name` reading a pipeline of its own in a new temporary directory,
    /// with no instance metadata: what the sinks' unit tests run on.
    #[cfg(test)]
    pub(crate) fn for_test(
        name: &str,
    ) -> (crate::pipeline::Pipeline, SinkContext, Arc<Metrics>, tempfile::TempDir) {
        let metrics = Arc::new(Metrics::new());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (p, reader) =
            crate::pipeline::Pipeline::with_one_sink(dir.path(), "s", Arc::clone(&metrics))
                .expect("a pipeline");
        let ctx = SinkContext {
            name: name.into(),
            reader,
            metrics: Arc::clone(&metrics),
            aws: Arc::new(crate::aws::Aws::new(crate::imds::Imds::disabled())),
        };
        (p, ctx, metrics, dir)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {source}")]
    Io {
        sink: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a sink stopped unexpectedly")]
    Stopped,
}

/// Run a sink until its reader ends (every input stopped and everything queued delivered).
/// `buffer_instance` is the buffer's `instance_id`: with a delivery's offsets, the stable
/// identity of each event (the elasticsearch sink's `_id`).
pub async fn run(
    config: &SinkConfig,
    ctx: SinkContext,
    buffer_instance: u64,
) -> Result<(), SinkError> {
    match &config.kind {
        SinkKind::Stdout { format } => stdout::run(*format, ctx).await,
        SinkKind::File { path, format } => file::run(path, *format, ctx).await,
        SinkKind::Null => null::run(ctx).await,
        SinkKind::Elasticsearch(es) => elasticsearch::run(es, buffer_instance, ctx).await,
        SinkKind::CloudWatchLogs(cw) => cloudwatch::run(cw, ctx).await,
    }
}
