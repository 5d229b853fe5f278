//! The planner on the real configs' sizes and made-up devices.

use super::*;
use crate::model::named_configs::named_config;
use candle_core::DType;

const GB: u64 = 1_000_000_000;

fn gpu(i: usize, free: u64) -> DeviceInfo {
    DeviceInfo {
        name: format!("cuda:{i}"),
        free,
    }
}

fn ram(free: u64) -> DeviceInfo {
    DeviceInfo {
        name: "cpu".into(),
        free,
    }
}

/// Free memory of a card sold as `gb` GB (GiB, as NVIDIA counts) once CUDA's context is up, as
/// mem_get_info reports it, roughly.
fn card_free(gb: u64) -> u64 {
    (gb << 30) - (600 << 20)
}

fn sizes(name: &str, dtype: DType, q: Quant, qv: bool) -> Sizes {
    Sizes::new(&named_config(name).unwrap(), dtype, q, qv, 2048)
}

fn fits(p: &Plan) {
    for d in &p.devices {
        assert!(d.left_bytes() >= 0, "{p}");
    }
    assert_eq!(p.layers.len(), 32);
}

#[test]
fn cogvlm_bf16_splits_over_two_24gb_cards() {
    let s = sizes("cogvlm-17b", DType::BF16, Quant::Float, false);
    let req = PlacementRequest {
        devices: vec!["cuda:0".into(), "cuda:1".into()],
        gpu_layers: None,
    };
    let devs = [gpu(0, card_free(24)), gpu(1, card_free(24))];
    let p = plan(&s, &req, &devs, &ram(64 * GB)).unwrap();
    println!("{p}");
    fits(&p);
    // The tower (8.8 GB) sits on the first card, so the second takes more layers; both take some, in order.
    let first = p.first_device_layers();
    assert!((8..16).contains(&first), "{first}");
    assert!(p.layers.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!((p.vision, p.head, p.layers[31]), (0, 1, 1));
    assert_eq!(p.devices[2].name, "cpu");
    assert_eq!(p.devices[2].modules, ["token embedding"]);
}

#[test]
fn cogvlm_bf16_on_one_24gb_card_offloads_to_ram() {
    let s = sizes("cogvlm-17b", DType::BF16, Quant::Float, false);
    let devs = [gpu(0, card_free(24))];
    // No flag: it does not fit on the card, so `--gpu-layers auto` is chosen.
    let p = plan(&s, &PlacementRequest::default(), &devs, &ram(64 * GB)).unwrap();
    println!("{p}");
    fits(&p);
    let reason = p.reason.to_string();
    assert!(reason.contains("--gpu-layers auto"), "{reason}");
    assert!(reason.contains("cuda:0 needs"), "{reason}");
    let k = p.first_device_layers();
    // 24 GiB less the tower (8.2 GiB), reserves and margin leaves room for about 16 layers of 0.75 GiB.
    assert!((12..=18).contains(&k), "{k}");
    assert_eq!(p.devices[1].name, "cpu");
    assert_eq!(p.head, 1);
    // One more layer would not fit on the card.
    let more = PlacementRequest {
        gpu_layers: Some(GpuLayers::Count(k + 1)),
        ..Default::default()
    };
    let e = plan(&s, &more, &devs, &ram(64 * GB)).unwrap_err();
    assert!(e.to_string().contains("cuda:0 needs"), "{e}");
    // An explicit count that fits is taken as given.
    let eight = PlacementRequest {
        gpu_layers: Some(GpuLayers::Count(8)),
        ..Default::default()
    };
    let p8 = plan(&s, &eight, &devs, &ram(64 * GB)).unwrap();
    assert_eq!(p8.first_device_layers(), 8);
}

#[test]
fn int4_fits_one_12gb_card_with_the_tower_quantized() {
    let s = sizes("cogvlm-17b", DType::BF16, Quant::Q4, true);
    let devs = [gpu(0, card_free(12))];
    let p = plan(&s, &PlacementRequest::default(), &devs, &ram(16 * GB)).unwrap();
    println!("{p}");
    fits(&p);
    // 9.2 GiB of weights fit; with room for a 2048-position KV cache and a 490 px prefill's activations a
    // few layers go to the CPU.
    let k = p.first_device_layers();
    assert!((26..=32).contains(&k), "{p}");
    assert!(p.devices[0].weight_bytes < 9 << 30, "{p}");
    // With a 24 GB card it all fits on the GPU.
    let p = plan(
        &s,
        &PlacementRequest::default(),
        &[gpu(0, card_free(24))],
        &ram(16 * GB),
    )
    .unwrap();
    assert_eq!(p.first_device_layers(), 32);
    assert_eq!(
        p.reason,
        Reason::Fits {
            device: "cuda:0".into()
        }
    );
    // Without --quant-vision the bf16 tower takes 8.2 GiB and 15 layers would go to the CPU; with 4 GB of
    // RAM that fails, and the refusal names the flag that fits.
    let s = sizes("cogvlm-17b", DType::BF16, Quant::Q4, false);
    let e = plan(&s, &PlacementRequest::default(), &devs, &ram(4 * GB)).unwrap_err();
    println!("{e}");
    assert!(e.to_string().contains("cpu needs"), "{e}");
    assert!(
        e.to_string()
            .contains("`--quant 4 --quant-vision` fits with 28 of 32 layers on cuda:0"),
        "{e}"
    );
}

#[test]
fn cogagent_bf16_fits_one_40gb_card() {
    let s = sizes("cogagent-18b", DType::BF16, Quant::Float, false);
    let devs = [gpu(0, card_free(40))];
    let p = plan(&s, &PlacementRequest::default(), &devs, &ram(64 * GB)).unwrap();
    println!("{p}");
    fits(&p);
    assert_eq!(p.first_device_layers(), 32);
    assert_eq!(p.cross, Some(0));
    assert!(p.devices[0].modules.contains(&"cross encoder".to_string()));
    // Its weights alone are over 35 GB.
    assert!(p.devices[0].weight_bytes > 35 * GB, "{p}");
}

#[test]
fn impossible_plans_are_refused_with_numbers_and_advice() {
    let s = sizes("cogvlm-17b", DType::BF16, Quant::Float, false);
    // An 8 GB card and 8 GB of RAM: bf16 cannot fit, int4 with the tower quantized does, offloaded.
    let e = plan(
        &s,
        &PlacementRequest::default(),
        &[gpu(0, card_free(8))],
        &ram(8 * GB),
    )
    .unwrap_err();
    println!("{e}");
    assert!(e.to_string().starts_with("CogVLM (17."), "{e}");
    assert!(e.to_string().contains("cpu needs"), "{e}");
    assert!(e.to_string().contains("GiB free"), "{e}");
    assert!(
        e.to_string().contains(
            "`--quant 4 --quant-vision` fits with 12 of 32 layers on cuda:0 and the rest on cpu"
        ),
        "{e}"
    );
    // The CPU alone with 24 GB: int8 (with its bf16 tower) is still too big, int4 fits.
    let e = plan(
        &s,
        &PlacementRequest::default(),
        &[ram(24 * GB)],
        &ram(24 * GB),
    )
    .unwrap_err();
    println!("{e}");
    assert!(
        e.to_string()
            .contains("`--quant 4` fits on cpu (22.4 GiB free)"),
        "{e}"
    );
    // Nothing at all fits a 2 GB machine.
    let e = plan(
        &s,
        &PlacementRequest::default(),
        &[ram(2 * GB)],
        &ram(2 * GB),
    )
    .unwrap_err();
    assert!(e.to_string().contains("Nothing fits here"), "{e}");
    let e = plan(
        &s,
        &PlacementRequest {
            gpu_layers: Some(GpuLayers::Count(40)),
            ..Default::default()
        },
        &[gpu(0, card_free(80))],
        &ram(64 * GB),
    )
    .unwrap_err();
    assert!(e.to_string().contains("but the model has 32"), "{e}");
}

#[test]
fn the_same_cpu_named_twice_splits_and_shares_its_memory() {
    let s = sizes("cogvlm-17b", DType::BF16, Quant::Q4, true);
    let req = PlacementRequest {
        devices: vec!["cpu".into(), "cpu".into()],
        gpu_layers: None,
    };
    let p = plan(&s, &req, &[ram(20 * GB), ram(20 * GB)], &ram(20 * GB)).unwrap();
    println!("{p}");
    assert!(p.is_split());
    assert_eq!(p.embed, 0);
    let k = p.first_device_layers();
    assert!(k > 0 && k < 32, "{k}");
    // Together they would need more than one 12 GB machine has.
    assert!(plan(&s, &req, &[ram(12 * GB), ram(12 * GB)], &ram(12 * GB)).is_err());
    assert_eq!("auto".parse::<GpuLayers>(), Ok(GpuLayers::Auto));
    assert_eq!("3".parse::<GpuLayers>(), Ok(GpuLayers::Count(3)));
    assert!("x".parse::<GpuLayers>().is_err());
}
