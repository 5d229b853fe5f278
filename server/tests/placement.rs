//! A model split across devices answers what it answers on one: the fixture parity suite passes with the layers
//! split over two CPU "devices" (the CPU named twice, and the vision tower with the first layer on one side and
//! everything else on the other), the split runs really move hidden states between slots, and their logits
//! equal the unsplit run's. Also: `make-checkpoint` writes checkpoints the normal loader accepts.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use cogvlm::generate::DeviceName;
use cogvlm::generate::{LoadOptions, Pipeline};
use cogvlm::model::placement::GpuLayers;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The models loaded on the CPU named twice (`--devices cpu,cpu`) and `--gpu-layers`.
fn placed(gpu_layers: Option<GpuLayers>) -> LoadOptions {
    LoadOptions {
        dtype: Some(candle_core::DType::F32),
        devices: vec![DeviceName::Cpu, DeviceName::Cpu],
        gpu_layers,
        ..Default::default()
    }
}

fn two_cpus() -> LoadOptions {
    placed(None)
}

/// Float weights on one CPU: what the placed runs are compared with.
fn f32_on_one_cpu() -> LoadOptions {
    LoadOptions {
        dtype: Some(candle_core::DType::F32),
        ..Default::default()
    }
}

/// The vision tower (and cross encoder) and layer 0 on the first slot, layers 1.. and the head on the second.
fn tower_and_first_layer() -> LoadOptions {
    placed(Some(GpuLayers::Count(1)))
}

fn parity_passes(opts: LoadOptions) {
    let mut lines = Vec::new();
    let (passed, failed) = cogvlm::tools::parity::run_all(&fixtures(), &opts, None, &mut |c| {
        lines.push(c.to_string())
    })
    .expect("fixture parity");
    let bad: Vec<&String> = lines.iter().filter(|l| l.contains("FAIL")).collect();
    assert_eq!(failed, 0, "{failed} failed:\n{bad:#?}");
    assert!(passed > 300, "{passed}");
}

#[test]
fn parity_with_the_cpu_named_twice() {
    parity_passes(two_cpus());
}

#[test]
fn parity_with_the_tower_and_first_layer_apart() {
    parity_passes(tower_and_first_layer());
}

fn load(model: &str, placement: LoadOptions) -> Pipeline {
    let opts = LoadOptions {
        tokenizer: Some(fixtures().join("tokenizer").join("tokenizer.json")),
        ..placement
    };
    Pipeline::load(
        &fixtures().join("models").join(model),
        &opts,
        &mut |_, _| {},
    )
    .expect("tiny checkpoint")
}

/// All positions' logits of a prompt with an image, then three decode steps' logits.
fn logits(pipe: &mut Pipeline) -> Vec<Tensor> {
    let image = image::open(fixtures().join("images").join("coffee.png")).expect("fixture image");
    let req = cogvlm::generate::ChatRequest {
        image: Some(image),
        history: Vec::new(),
        query: "What is on the table?".into(),
        version: None,
        sampling: cogvlm::generate::Sampling::greedy(),
    };
    let prep = pipe.prepare(&req).expect("prompt");
    let model = pipe.model();
    let mut cache = model.new_cache(512);
    let pre = model
        .prefill(
            &prep.input,
            prep.image.as_ref(),
            prep.cross.as_ref(),
            &mut cache,
            true,
            None,
        )
        .expect("prefill");
    let mut out = vec![pre.logits.to_device(&Device::Cpu).unwrap()];
    for t in [450u32, 1243, 338] {
        out.push(model.step(t, &mut cache).expect("step"));
    }
    out
}

#[test]
fn split_runs_transfer_and_equal_the_unsplit_run() {
    for model in ["cogvlm_tiny_224", "cogvlm_tiny_490", "cogagent_tiny"] {
        let want = logits(&mut load(model, f32_on_one_cpu()));
        for req in [two_cpus(), tower_and_first_layer()] {
            let mut pipe = load(model, req.clone());
            let plan = pipe.plan().expect("plan").clone();
            assert!(plan.is_split(), "{model} {req:?}: {plan}");
            if req.gpu_layers.is_some() {
                assert_eq!(plan.first_device_layers(), 1, "{plan}");
                assert_eq!((plan.vision, plan.head), (0, 1), "{plan}");
            }
            let got = logits(&mut pipe);
            // The prefill crosses slots at least once (hidden states), each decode step too.
            let moved = pipe.model().placement().transfers();
            assert!(moved >= 4, "{model} {req:?}: {moved} transfers");
            for (g, w) in got.iter().zip(&want) {
                let diff = (g - w)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(diff, 0.0, "{model} {req:?}: split logits differ by {diff}");
            }
        }
        // The unsplit run moves nothing.
        assert_eq!(
            load(model, f32_on_one_cpu())
                .model()
                .placement()
                .transfers(),
            0
        );
    }
}

#[test]
fn made_checkpoints_load_through_the_normal_loader() {
    for model in ["cogvlm_tiny_224", "cogagent_tiny", "cogvlm2_tiny_224"] {
        let out = std::env::temp_dir().join(format!("cogvlm-make-{model}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let config = fixtures().join("models").join(model).join("config.json");
        let args = cogvlm::tools::make_checkpoint::MakeArgs {
            config: config.display().to_string(),
            out: out.clone(),
            // Small shards, so the tiny model is written as several, like the real ones.
            shard_bytes: 1_000_000,
            seed: 1,
            layers: None,
            vision_layers: None,
            position_scale: 1.0,
            identity_adapter: None,
        };
        let written = cogvlm::tools::make_checkpoint::run(&args).expect("make-checkpoint");
        assert!(written.shards >= 3, "{written:?}");
        assert!(out.join("model.safetensors.index.json").is_file());
        assert!(out.join("tokenizer.json").is_file());
        assert_eq!(
            cogvlm::model::weights::files_without_pt_format(&out).unwrap(),
            Vec::<PathBuf>::new()
        );
        // The same bytes twice for one seed.
        let again = out.with_extension("again");
        let _ = std::fs::remove_dir_all(&again);
        cogvlm::tools::make_checkpoint::run(&cogvlm::tools::make_checkpoint::MakeArgs {
            out: again.clone(),
            config: args.config.clone(),
            ..args
        })
        .expect("second write");
        let shard = format!("model-00001-of-{:05}.safetensors", written.shards);
        let first = std::fs::read(out.join(&shard)).expect("first shard");
        assert_eq!(first, std::fs::read(again.join(&shard)).unwrap());
        // Loads through the sharded path with its completeness check, in bf16 and int8, and answers.
        for quant in ["none", "8"] {
            let opts = LoadOptions {
                dtype: Some(candle_core::DType::BF16),
                quant: quant.parse().unwrap(),
                ..Default::default()
            };
            let mut pipe = Pipeline::load(&out, &opts, &mut |_, _| {}).expect("made checkpoint");
            let image = image::open(fixtures().join("images").join("coffee.png")).unwrap();
            let req = cogvlm::generate::ChatRequest {
                image: Some(image),
                history: Vec::new(),
                query: "What is it?".into(),
                version: None,
                sampling: cogvlm::generate::Sampling {
                    max_new_tokens: Some(3),
                    ..cogvlm::generate::Sampling::greedy()
                },
            };
            let st = pipe.generate(&req, &mut |_| true).expect("answer");
            assert_eq!(st.generated_tokens, 3);
        }
        // A folder that is not empty is refused.
        assert!(
            cogvlm::tools::make_checkpoint::run(&cogvlm::tools::make_checkpoint::MakeArgs {
                config: args.config.clone(),
                out: out.clone(),
                shard_bytes: 1_000_000,
                seed: 1,
                layers: Some(1),
                vision_layers: None,
                position_scale: 1.0,
                identity_adapter: None,
            })
            .is_err()
        );
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(&again);
    }
}
