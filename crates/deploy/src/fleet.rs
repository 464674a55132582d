//! Recovery rounds for every deployment of a state directory, each on the
//! backend it runs on (`ibkit deploy watch`, `ibkit serve
//! --recover-deployments`): one [`Controller`] per [`BackendSpec`], made on
//! first need by the caller's factory.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::any_backend::AnyBackend;
use crate::controller::Controller;
use crate::store::{BackendSpec, Store};

/// A backend that could not be reached is tried again after this long (a
/// missing clouds.yaml must not be retried, and logged, every round).
const RETRY_FACTORY_AFTER: Duration = Duration::from_secs(60);
const ROUND_EVERY: Duration = Duration::from_secs(2);

/// Runs recovery rounds for `names` (every deployment in `store` when
/// empty) until `stop` completes. `make` builds the controller for a
/// backend; `say` gets every problem (the loop goes on).
pub async fn watch_fleet<F, Fut>(
    store: &Store,
    names: &[String],
    mut make: F,
    say: &(dyn Fn(&str) + Send + Sync),
    stop: impl Future<Output = ()>,
) where
    F: FnMut(BackendSpec) -> Fut,
    Fut: Future<Output = Result<Controller<AnyBackend>, String>>,
{
    let mut controllers: HashMap<BackendSpec, Controller<AnyBackend>> = HashMap::new();
    let mut failed: HashMap<BackendSpec, Instant> = HashMap::new();
    tokio::pin!(stop);
    loop {
        let round: Vec<String> = if names.is_empty() {
            store.names().unwrap_or_default()
        } else {
            names.to_vec()
        };
        for name in &round {
            let record = match store.load(name) {
                Ok(r) => r,
                Err(e) => {
                    if !names.is_empty() {
                        say(&format!("recovery of {name}: {e}"));
                    }
                    continue;
                }
            };
            let spec = record.backend;
            if !controllers.contains_key(&spec) {
                if failed
                    .get(&spec)
                    .is_some_and(|t| t.elapsed() < RETRY_FACTORY_AFTER)
                {
                    continue;
                }
                match make(spec.clone()).await {
                    Ok(c) => {
                        failed.remove(&spec);
                        controllers.insert(spec.clone(), c);
                    }
                    Err(e) => {
                        say(&format!("recovery of {name}: cannot reach {spec}: {e}"));
                        failed.insert(spec, Instant::now());
                        continue;
                    }
                }
            }
            if let Some(ctl) = controllers.get(&spec)
                && let Err(e) = ctl.watch_round(name).await
            {
                say(&format!("recovery of {name}: {e}"));
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(ROUND_EVERY) => {}
        }
    }
}
