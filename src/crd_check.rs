//! The start-up check of the installed ResilientService CRD. An operator newer than the
//! CRD would have every status write refused; instead it says once, in its log and in
//! `/readyz`, which CRD to apply, and waits. It keeps looking, so applying the CRD is
//! enough: no restart. It does not lead or act until the CRD matches, so during an upgrade
//! of the operator before its CRD the old replicas keep the lease and keep working.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::{Client, CustomResourceExt};

use crate::api::{ResilientService, ANNOTATION_SCHEMA_HASH, ANNOTATION_VERSION};
use crate::http::Health;

/// How often the CRD is read again while it does not match.
const RETRY: Duration = Duration::from_secs(2);
/// The longest one read of the CRD may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// What a user runs to install the CRD of this release.
const APPLY: &str = "kubectl apply --server-side -f crds/ (from this release), or `helm upgrade` to this release's chart with crds.install=true";

/// The CRD this operator was built with.
#[derive(Clone, Debug)]
pub struct Expected {
    /// The CRD's name.
    pub name: String,
    /// The schema hash stamped into it (crate::api::schema_hash).
    pub schema_hash: String,
    /// The operator version stamped into it.
    pub version: String,
}

impl Expected {
    /// The CRD of this build; `name` replaces its name (for tests only: they may not change
    /// the CRD every other test shares, so they point the check at one of their own).
    pub fn of_this_build(name: Option<String>) -> Self {
        Self {
            name: name.unwrap_or_else(|| ResilientService::crd_name().to_string()),
            schema_hash: crate::api::schema_hash().to_string(),
            version: crate::api::VERSION.to_string(),
        }
    }
}

/// Why the installed CRD will not do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("the CustomResourceDefinition {name} is not installed; perennial {version} needs its own: {APPLY}")]
    Missing { name: String, version: String },
    #[error("the installed CustomResourceDefinition {name} has no {ANNOTATION_SCHEMA_HASH} annotation, so it is not the one perennial {version} was built with ({expected}); status writes would fail: {APPLY}")]
    Unstamped {
        name: String,
        version: String,
        expected: String,
    },
    #[error("the installed CustomResourceDefinition {name} is from perennial {installed_version} (schema {installed}), this operator is perennial {version} (schema {expected}); status writes would fail: {APPLY}")]
    Differs {
        name: String,
        installed: String,
        installed_version: String,
        expected: String,
        version: String,
    },
    #[error("cannot read the CustomResourceDefinition {name}: {reason}; the operator needs get on customresourcedefinitions/{name} (the chart's ClusterRole grants it)")]
    Unreadable { name: String, reason: String },
}

/// Whether `installed` (None: there is none) is the CRD `expected` names.
pub fn verdict(
    expected: &Expected,
    installed: Option<&CustomResourceDefinition>,
) -> Result<(), Mismatch> {
    let Some(crd) = installed else {
        return Err(Mismatch::Missing {
            name: expected.name.clone(),
            version: expected.version.clone(),
        });
    };
    let annotation = |key: &str| {
        crd.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    match annotation(ANNOTATION_SCHEMA_HASH) {
        Some(hash) if hash == expected.schema_hash => Ok(()),
        Some(hash) => Err(Mismatch::Differs {
            name: expected.name.clone(),
            installed: hash,
            installed_version: annotation(ANNOTATION_VERSION).unwrap_or_else(|| "unknown".into()),
            expected: expected.schema_hash.clone(),
            version: expected.version.clone(),
        }),
        None => Err(Mismatch::Unstamped {
            name: expected.name.clone(),
            version: expected.version.clone(),
            expected: expected.schema_hash.clone(),
        }),
    }
}

/// Reads the CRD until it is the expected one. Meanwhile `/readyz` reports why not, and
/// the log says it once per change of reason.
pub async fn wait_until_installed(client: &Client, expected: &Expected, health: &Health) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut last: Option<Mismatch> = None;
    loop {
        let read = tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(&expected.name)).await;
        let result = match read {
            Ok(Ok(installed)) => verdict(expected, installed.as_ref()),
            Ok(Err(e)) => Err(Mismatch::Unreadable {
                name: expected.name.clone(),
                reason: e.to_string(),
            }),
            Err(_) => Err(Mismatch::Unreadable {
                name: expected.name.clone(),
                reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
            }),
        };
        match result {
            Ok(()) => {
                health.unblock();
                tracing::info!(crd = %expected.name, schema = %expected.schema_hash, "the installed CRD is the one this operator was built with");
                return;
            }
            Err(mismatch) => {
                if last.as_ref() != Some(&mismatch) {
                    tracing::error!("{mismatch}; waiting for it before acting");
                }
                health.block(mismatch.to_string());
                last = Some(mismatch);
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        Expected {
            name: "resilientservices.perennial.dev".into(),
            schema_hash: "sha256:00112233aabbccdd".into(),
            version: "0.2.0".into(),
        }
    }

    fn installed(stamp: &[(&str, &str)]) -> CustomResourceDefinition {
        let mut crd = CustomResourceDefinition::default();
        crd.metadata.name = Some("resilientservices.perennial.dev".into());
        crd.metadata.annotations = (!stamp.is_empty()).then(|| {
            stamp
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        });
        crd
    }

    #[test]
    fn a_crd_with_the_expected_schema_hash_matches_whatever_version_generated_it() {
        let crd = installed(&[
            (ANNOTATION_SCHEMA_HASH, "sha256:00112233aabbccdd"),
            (ANNOTATION_VERSION, "0.1.9"),
        ]);
        assert_eq!(verdict(&expected(), Some(&crd)), Ok(()));
    }

    #[test]
    fn a_crd_of_another_schema_names_both_versions_and_what_to_apply() {
        let crd = installed(&[
            (ANNOTATION_SCHEMA_HASH, "sha256:ffffffffffffffff"),
            (ANNOTATION_VERSION, "0.1.0"),
        ]);
        let why = verdict(&expected(), Some(&crd)).unwrap_err().to_string();
        assert_eq!(
            why,
            "the installed CustomResourceDefinition resilientservices.perennial.dev is from perennial 0.1.0 \
             (schema sha256:ffffffffffffffff), this operator is perennial 0.2.0 (schema sha256:00112233aabbccdd); \
             status writes would fail: kubectl apply --server-side -f crds/ (from this release), or `helm upgrade` \
             to this release's chart with crds.install=true"
        );
    }

    #[test]
    fn a_missing_or_unstamped_crd_does_not_match_and_says_what_to_apply() {
        let missing = verdict(&expected(), None).unwrap_err();
        assert!(matches!(missing, Mismatch::Missing { .. }));
        assert!(missing.to_string().contains("is not installed"));
        assert!(missing
            .to_string()
            .contains("kubectl apply --server-side -f crds/"));

        // A CRD from before the stamp, or written by hand.
        let unstamped = verdict(&expected(), Some(&installed(&[]))).unwrap_err();
        assert!(matches!(unstamped, Mismatch::Unstamped { .. }));
        assert!(unstamped
            .to_string()
            .contains("has no perennial.dev/schema-hash annotation"));
        assert!(unstamped
            .to_string()
            .contains("kubectl apply --server-side -f crds/"));
    }

    #[test]
    fn the_crd_generated_by_this_build_matches_this_build() {
        let crd = crate::api::crd();
        assert_eq!(verdict(&Expected::of_this_build(None), Some(&crd)), Ok(()));
        assert_eq!(
            Expected::of_this_build(None).name,
            crd.metadata.name.unwrap_or_default()
        );
    }
}
