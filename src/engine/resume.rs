//! What a resume may change. The configuration a resume asks for (the run's
//! config.toml, or `--config`, with the environment and flags on top) is
//! compared key by key with the one its checkpoint was saved with; every
//! difference is applied and recorded, set as an lr change, or refused.
use crate::config::Config;
use crate::control::ConfigChange;
use anyhow::{bail, Result};
use std::collections::BTreeSet;

/// What a resume does with a changed key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Applied, written to the run's config.toml, logged (`config-changed`).
    Apply,
    /// The schedule's setting, applied to the saved schedule from now on
    /// (and written and logged as `Apply`).
    Schedule,
    /// `train.lr`: the lr from now on, a manual change in the lr timeline;
    /// config.toml keeps the run's initial lr.
    SetLr,
    /// The run would be another run: refused (exit 2), with the reason.
    Refuse(&'static str),
}

const NETWORK: &str = "it fixes the network the checkpoint holds";
const INIT: &str = "it only chose how the network started: the checkpoint holds its weights now";
const DATA: &str = "it fixes the images and the validation split the run trains and is scheduled on";
const AUGMENT: &str = "it is part of the run's augmentation and evaluation";
const STEP: &str = "it fixes what a step is: the saved step would mean other images";
const OPTIMISER: &str = "it is part of the optimiser the momentum buffers belong to";
const PLACE: &str = "it names where a new run goes: a resumed run stays in its folder";

/// Every configuration key and its policy (a test checks the list is
/// complete, so a new key needs a decision).
pub const POLICIES: &[(&str, Policy)] = &[
    ("model.config", Policy::Refuse(NETWORK)),
    ("model.width", Policy::Refuse(NETWORK)),
    ("model.batch-norm", Policy::Refuse(NETWORK)),
    ("model.dropout", Policy::Refuse(NETWORK)),
    ("init.scheme", Policy::Refuse(INIT)),
    ("init.std", Policy::Refuse(INIT)),
    ("init.from", Policy::Refuse(INIT)),
    ("init.warm-start", Policy::Refuse(INIT)),
    ("data.dataset", Policy::Refuse(DATA)),
    ("data.dir", Policy::Apply),
    ("data.download", Policy::Apply),
    ("data.val-size", Policy::Refuse(DATA)),
    ("data.subset", Policy::Refuse(DATA)),
    ("data.test-subset", Policy::Apply),
    ("data.crop", Policy::Refuse(AUGMENT)),
    ("data.scale", Policy::Refuse(AUGMENT)),
    ("data.test-scale", Policy::Refuse(AUGMENT)),
    ("data.pad", Policy::Refuse(AUGMENT)),
    ("data.flip", Policy::Refuse(AUGMENT)),
    ("data.pca-lighting", Policy::Refuse(AUGMENT)),
    ("data.pca-source", Policy::Refuse(AUGMENT)),
    ("data.normalize", Policy::Refuse(AUGMENT)),
    ("data.workers", Policy::Apply),
    ("data.skip-bad-images", Policy::Apply),
    ("train.batch-size", Policy::Refuse(STEP)),
    ("train.epochs", Policy::Apply),
    ("train.lr", Policy::SetLr),
    ("train.momentum", Policy::Refuse(OPTIMISER)),
    ("train.weight-decay", Policy::Refuse(OPTIMISER)),
    ("train.decay-biases", Policy::Refuse(OPTIMISER)),
    ("train.lr-decay-factor", Policy::Schedule),
    ("train.max-decays", Policy::Schedule),
    ("train.patience", Policy::Schedule),
    ("train.manual-decays-count", Policy::Schedule),
    ("train.device", Policy::Apply),
    ("train.seed", Policy::Refuse(DATA)),
    ("train.precision", Policy::Apply),
    ("train.threads", Policy::Apply),
    ("train.channels-last", Policy::Apply),
    ("train.step-events-per-sec", Policy::Apply),
    ("run.runs-dir", Policy::Refuse(PLACE)),
    ("run.name", Policy::Refuse(PLACE)),
    ("run.keep-last", Policy::Apply),
    ("run.checkpoint-every", Policy::Apply),
    ("run.tensorboard", Policy::Apply),
];

pub fn policy(key: &str) -> Option<Policy> {
    POLICIES.iter().find(|(k, _)| *k == key).map(|&(_, p)| p)
}

/// A resume's configuration, settled.
#[derive(Debug)]
pub struct Settled {
    /// What the run goes on with, and what config.toml now says.
    pub config: Config,
    /// The applied changes (schedule keys included), in key order.
    pub changes: Vec<ConfigChange>,
    /// The lr to go on with, when `train.lr` was asked for.
    pub lr: Option<f64>,
}

/// "section.key" -> the value as TOML, for every key that is set.
fn flatten(cfg: &Config) -> std::collections::BTreeMap<String, String> {
    let table: toml::Table = toml::from_str(&cfg.to_toml()).expect("a config serialises to a table");
    let mut out = std::collections::BTreeMap::new();
    for (section, fields) in table {
        if let toml::Value::Table(fields) = fields {
            for (k, v) in fields {
                out.insert(format!("{section}.{k}"), v.to_string());
            }
        }
    }
    out
}

/// Compares the configuration a resume asks for with the saved one.
/// `explicit`: keys set by flags or the environment; `train.lr` among them
/// sets the lr even when it equals the saved initial lr.
pub fn settle(saved: &Config, wanted: &Config, explicit: &BTreeSet<String>) -> Result<Settled> {
    let (old, new) = (flatten(saved), flatten(wanted));
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let unset = || "unset".to_owned();
    let mut changes = Vec::new();
    let mut refused = Vec::new();
    let mut lr = None;
    for key in keys {
        let (o, n) = (old.get(key), new.get(key));
        let asked = explicit.contains(key.as_str());
        if o == n && !(asked && key == "train.lr") {
            continue;
        }
        let (o, n) = (o.cloned().unwrap_or_else(unset), n.cloned().unwrap_or_else(unset));
        match policy(key).unwrap_or(Policy::Refuse("it is not a key vggtrain knows")) {
            Policy::Apply | Policy::Schedule => changes.push(ConfigChange {
                key: key.clone(),
                old: o,
                new: n,
            }),
            Policy::SetLr => lr = Some(wanted.train.lr),
            Policy::Refuse(why) => refused.push(format!("  {key} = {n} (the run has {o}): {why}")),
        }
    }
    if !refused.is_empty() {
        bail!(
            "this resume would change what the run is:\n{}\nresume without these changes, or start a new run (another --name)",
            refused.join("\n")
        );
    }
    let mut config = wanted.clone();
    config.train.lr = saved.train.lr;
    Ok(Settled { config, changes, lr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_key_has_a_policy() {
        let keys = flatten(&Config {
            data: crate::config::DataConfig {
                dir: Some("d".into()),
                val_size: Some(1),
                subset: Some(1),
                test_subset: Some(1),
                crop: Some(1),
                test_scale: Some(1),
                ..Default::default()
            },
            init: crate::config::InitConfig {
                from: Some("f".into()),
                warm_start: Some("w".into()),
                ..Default::default()
            },
            run: crate::config::RunConfig {
                runs_dir: Some("r".into()),
                name: Some("n".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        for key in keys.keys() {
            assert!(policy(key).is_some(), "{key} has no resume policy");
        }
        assert_eq!(keys.len(), POLICIES.len(), "POLICIES lists a key the config lacks");
    }

    #[test]
    fn allowed_changes_apply_and_others_are_refused_by_name() {
        let saved = Config::default();
        let mut wanted = saved.clone();
        wanted.train.epochs = 100;
        wanted.train.patience = 5;
        wanted.run.keep_last = 1;
        let s = settle(&saved, &wanted, &BTreeSet::new()).unwrap();
        let keys: Vec<&str> = s.changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["run.keep-last", "train.epochs", "train.patience"]);
        assert_eq!((s.changes[1].old.as_str(), s.changes[1].new.as_str()), ("74", "100"));
        assert_eq!(s.config.train.epochs, 100);
        assert_eq!(s.lr, None);

        wanted.train.batch_size = 128;
        wanted.train.seed = 3;
        let err = format!("{:#}", settle(&saved, &wanted, &BTreeSet::new()).unwrap_err());
        assert!(
            err.contains("train.batch-size = 128 (the run has 256)") && err.contains("train.seed = 3 (the run has 0)"),
            "{err}"
        );
    }

    #[test]
    fn lr_is_set_now_and_config_keeps_the_initial_lr() {
        let saved = Config::default();
        let mut wanted = saved.clone();
        wanted.train.lr = 1e-3;
        let s = settle(&saved, &wanted, &BTreeSet::new()).unwrap();
        assert_eq!(s.lr, Some(1e-3));
        assert_eq!(s.config.train.lr, 1e-2);
        assert!(s.changes.is_empty());
        // Asked for explicitly, the initial value is a change too (the run's
        // lr may have decayed since).
        let explicit = BTreeSet::from(["train.lr".to_owned()]);
        assert_eq!(settle(&saved, &saved, &explicit).unwrap().lr, Some(1e-2));
        assert_eq!(settle(&saved, &saved, &BTreeSet::new()).unwrap().lr, None);
    }
}
