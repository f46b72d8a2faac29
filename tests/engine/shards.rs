//! Training on tar shards that `vggtrain pack` wrote from real photographs:
//! a resume, also from a stop inside an epoch, ends with the weights of a
//! run never interrupted.
use super::*;
use common::photo_folder;
use vggtrain::config::DatasetName;

fn pack(folder: &Path, out: &Path) {
    let args = vggtrain::pack::PackArgs {
        folder: folder.to_owned(),
        out: out.to_owned(),
        max_side: None,
        shard_bytes: 200_000,
        seed: 0,
    };
    let packed = vggtrain::pack::run(&args, &mut |_, _| {}).unwrap();
    assert!(packed.shards >= 4, "several shards: {packed:?}");
}

#[test]
fn a_resume_on_shards_is_bitwise_identical_to_an_uninterrupted_run() {
    let _serial = serial();
    let data = tempfile::tempdir().unwrap();
    photo_folder(&data.path().join("folder"), [12, 2]);
    let shards = data.path().join("shards");
    pack(&data.path().join("folder"), &shards);
    let runs = tempfile::tempdir().unwrap();
    let mut cfg = tiny(runs.path(), 2);
    cfg.data.dataset = DatasetName::Shards;
    cfg.data.dir = Some(shards);
    cfg.data.crop = Some(32);
    cfg.data.scale = [36, 48];
    cfg.data.subset = None;
    cfg.data.test_subset = None;
    cfg.data.val_size = Some(16);
    cfg.train.batch_size = 8;

    cfg.run.name = Some("straight".into());
    let (straight, events) = run_to_end(Start::new(cfg.clone()));
    let info = events.iter().find_map(|e| match e {
        Event::Started(i) => Some(i.clone()),
        _ => None,
    });
    let info = info.expect("started");
    assert_eq!((info.train_images, info.val_images, info.test_images), (80, 16, 16));
    assert_eq!(info.classes.len(), 8);
    assert!(events.iter().any(|e| matches!(e, Event::Finished { .. })), "{events:?}");

    // Stopped inside the first epoch, then resumed.
    cfg.run.name = Some("mid".into());
    let mid = stopped_inside_the_first_epoch(&cfg);
    let (_, events) = run_to_end(Start::new(cfg.clone()).resume(&mid));
    assert!(events.iter().any(|e| matches!(e, Event::Finished { .. })), "{events:?}");

    let want = tensors(&newest(&straight).unwrap());
    let got = tensors(&newest(&mid).unwrap());
    assert_eq!(want.len(), got.len());
    for (name, t) in &want {
        assert!(t.equal(&got[name]), "{name} differs after the resume");
    }
}
