//! int8 / int4 language-model weights (`--quant 8|4`) against the f32 reference fixtures.
//!
//! The tiny fixture models (hidden 48 or 24, intermediate 128 or 64) are mostly too narrow for the 32-element
//! blocks: only matrices whose inner dim is a multiple of 32 get quantized (the MLP down projections and, in
//! CogAgent, the cross-attention key_value and dense), all in Q8_0 or Q4_0; the rest stay float and are reported.
//! Bounds on the logits' rel-L2 to f32 (`Quant::logit_tolerance`): Q8 ≤ 3e-2 (worst measured 1.1e-2), Q4 ≤ 3e-1
//! (worst measured 2.0e-1, CogAgent, whose cross-attention is quantized too).
//!
//! `--quant-vision` quantizes the EVA2-CLIP tower's and the GLU adapter's linear layers as well (those whose inner
//! dim fits: 32 or 64 wide here, not 80, 48 or 24). Bounds on the tower's output (`Quant::vision_tolerance`):
//! Q8 ≤ 5e-2 (worst measured 2.8e-2), Q4 ≤ 5e-1 (worst 3.3e-1: Q4_0 on 32-wide random layers); the logits stay
//! within the language model's bounds above (worst 1.5e-2 and 2.1e-1), and with the image positions' logits
//! following the tower's looser output, only the text positions' argmax is judged.

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::quantized::GgmlDType;
use candle_core::DType;
use cogvlm::generate::{LoadOptions, Pipeline};
use cogvlm::model::quant::estimated_weight_bytes;
use cogvlm::model::quant::Quant;
use cogvlm::tools::parity::Runner;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn load(model: &str, quant: Quant, quant_vision: bool) -> Pipeline {
    let opts = LoadOptions {
        dtype: Some(candle_core::DType::F32),
        tokenizer: Some(fixtures().join("tokenizer").join("tokenizer.json")),
        quant,
        quant_vision,
        ..Default::default()
    };
    Pipeline::load(
        &fixtures().join("models").join(model),
        &opts,
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("loading {model} with {quant}: {e:#}"))
}

/// Every language-model matrix of a tiny fixture model (and, with `vision`, every vision-tower and adapter
/// matrix), split by whether its inner dim is a multiple of 32.
fn expected_split(cogagent: bool, vision: bool) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut fits = BTreeSet::new();
    let mut float = BTreeSet::from(["lm_head.weight".to_string()]);
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        for e in ["language", "vision"] {
            fits.insert(format!("{p}.mlp.{e}_mlp.down_proj.weight"));
            for m in ["gate_proj", "up_proj"] {
                float.insert(format!("{p}.mlp.{e}_mlp.{m}.weight"));
            }
            float.insert(format!("{p}.self_attn.{e}_expert_query_key_value.weight"));
            float.insert(format!("{p}.self_attn.{e}_expert_dense.weight"));
        }
        if cogagent {
            // cross hidden = compute = 32: key_value and dense fit; query reads the 24-wide hidden state.
            fits.insert(format!("{p}.cross_attn.key_value.weight"));
            fits.insert(format!("{p}.cross_attn.dense.weight"));
            float.insert(format!("{p}.cross_attn.query.weight"));
        }
        if vision {
            // Tower hidden 32 (MLP 80 in the 490 px model, 64 in CogAgent's).
            let v = format!("model.vision.transformer.layers.{l}");
            for m in ["attention.query_key_value", "attention.dense", "mlp.fc1"] {
                fits.insert(format!("{v}.{m}.weight"));
            }
            let fc2 = format!("{v}.mlp.fc2.weight");
            if cogagent { &mut fits } else { &mut float }.insert(fc2);
        }
    }
    if vision {
        // The adapter reads the tower's 32 wide rows, then the LM's hidden (48 or 24), then its MLP (128 or 64).
        let g = "model.vision.linear_proj";
        fits.insert(format!("{g}.linear_proj.weight"));
        fits.insert(format!("{g}.dense_4h_to_h.weight"));
        float.insert(format!("{g}.gate_proj.weight"));
        float.insert(format!("{g}.dense_h_to_4h.weight"));
    }
    (fits, float)
}

#[test]
fn the_loader_reports_exactly_the_matrices_that_do_not_fit() {
    let cases = [
        ("cogvlm_tiny_490", false, false),
        ("cogagent_tiny", true, false),
        ("cogvlm_tiny_490", false, true),
        ("cogagent_tiny", true, true),
    ];
    for (model, cogagent, vision) in cases {
        let (fits, float) = expected_split(cogagent, vision);
        let plain = load(model, Quant::Float, vision);
        assert!(plain.model().quant_report().quantized.is_empty());
        assert_eq!(plain.model().quant_report().summary(), "");
        for (quant, format) in [(Quant::Q8, GgmlDType::Q8_0), (Quant::Q4, GgmlDType::Q4_0)] {
            let p = load(model, quant, vision);
            let r = p.model().quant_report();
            let quantized: BTreeSet<String> = r.quantized.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(quantized, fits, "{model} {quant}: quantized");
            assert!(
                r.quantized.iter().all(|(_, d)| *d == format),
                "{model} {quant}: {r:?}"
            );
            let kept: BTreeSet<String> = r.kept_float.iter().cloned().collect();
            assert_eq!(kept, float, "{model} {quant}: kept float");
            assert!(r
                .summary()
                .contains("kept in float (shape does not fit the block size): "));
            assert!(
                r.quantized_bytes * 3 < r.replaced_float_bytes,
                "{model} {quant}: {r:?}"
            );
            assert_eq!(
                plain.model().weight_bytes() - p.model().weight_bytes(),
                r.replaced_float_bytes - r.quantized_bytes
            );
            // The bench's estimate from the config alone agrees with what loading did.
            let cfg = &p.model().cfg;
            assert_eq!(
                estimated_weight_bytes(cfg, DType::F32, quant, vision),
                p.model().weight_bytes(),
                "{model} {quant} vision {vision}"
            );
        }
    }
}

/// Every check of the parity suite (prompt, vision towers in f32, logits, hidden states, teacher-forced decode,
/// greedy tokens) within the quantization's tolerances, on one case per fixture model.
fn parity(quant: Quant, vision: bool) {
    let mut failed = Vec::new();
    let mut logits = Vec::new();
    for id in [
        "vlm490_chat_chelsea",
        "vlm224_chat_coffee",
        "agent_chat_agent_gui",
    ] {
        let mut runner = Runner::on_cpu(&fixtures(), candle_core::DType::F32)
            .expect("fixture runner")
            .with_quant(quant, vision);
        let case = runner.case(id).unwrap_or_else(|e| panic!("{e:#}"));
        let checks = runner.run_case(&case, &mut |c| println!("{c}"));
        assert!(checks.len() >= 10, "{id}: only {} checks ran", checks.len());
        logits.extend(checks.iter().filter(|c| c.name == "logits_last").cloned());
        failed.extend(checks.into_iter().filter(|c| !c.ok).map(|c| c.to_string()));
    }
    assert_eq!(logits.len(), 3, "every case compares the last logits");
    assert!(
        failed.is_empty(),
        "{quant} (vision {vision}):\n{}",
        failed.join("\n")
    );
}

#[test]
fn int8_logits_are_within_3e_2_of_f32() {
    parity(Quant::Q8, false);
}

#[test]
fn int4_logits_are_within_3e_1_of_f32() {
    parity(Quant::Q4, false);
}

#[test]
fn int8_vision_tower_is_within_5e_2_of_f32() {
    parity(Quant::Q8, true);
}

#[test]
fn int4_vision_tower_is_within_5e_1_of_f32() {
    parity(Quant::Q4, true);
}
