//! Deciding the plan: the request's placement checked against each device's free memory, and the smallest
//! change that fits when it does not.

use super::Change;
use super::{
    gib, DeviceInfo, DevicePlan, GpuLayers, PlacementRequest, Plan, Reason, Refusal, Sizes, MARGIN,
};

/// Modules assigned to device slots, before their sizes are summed.
struct Assign {
    tower: usize,
    layers: Vec<usize>,
}

/// Decides the plan for `sizes` on `devices` (the request's, or the one `--device`, with their free memory)
/// and `cpu` (the host, which holds the token embedding and takes offloaded layers).
pub fn plan(
    sizes: &Sizes,
    req: &PlacementRequest,
    devices: &[DeviceInfo],
    cpu: &DeviceInfo,
) -> std::result::Result<Plan, Refusal> {
    match try_plan(sizes, req, devices, cpu) {
        Ok(p) => Ok(p),
        Err(why) => Err(Refusal {
            what: sizes.what.clone(),
            quant: sizes.quant,
            why,
            fix: advice(sizes, req, devices, cpu),
        }),
    }
}

fn try_plan(
    sizes: &Sizes,
    req: &PlacementRequest,
    devices: &[DeviceInfo],
    cpu: &DeviceInfo,
) -> std::result::Result<Plan, String> {
    let Some(first) = devices.first() else {
        return Err("no device given".into());
    };
    let n = sizes.layers;
    match req.gpu_layers {
        Some(g) => {
            let offload = devices.get(1).cloned().unwrap_or_else(|| cpu.clone());
            let slots = vec![first.clone(), offload];
            offload_plan(sizes, slots, cpu, g)
        }
        None if devices.len() > 1 => split_plan(sizes, devices, cpu),
        None => {
            let all = Assign {
                tower: 0,
                layers: vec![0; n],
            };
            let p = build(
                sizes,
                vec![first.clone()],
                cpu,
                &all,
                Reason::Fits {
                    device: first.name.clone(),
                },
            );
            match check(&p) {
                Ok(()) => Ok(p),
                // A GPU too small for the whole model: the CPU takes what does not fit.
                Err(short) if !first.is_cpu() => {
                    let slots = vec![first.clone(), cpu.clone()];
                    match offload_plan(sizes, slots, cpu, GpuLayers::Auto) {
                        Ok(mut p) => {
                            p.reason = Reason::TooBigForGpu {
                                short,
                                then: Box::new(p.reason),
                            };
                            Ok(p)
                        }
                        Err(e) => Err(format!("{short}; with layers offloaded to the CPU: {e}")),
                    }
                }
                Err(short) => Err(short),
            }
        }
    }
}

/// The towers and the first `g` layers on `slots[0]`, the rest on `slots[1]`.
fn offload_plan(
    sizes: &Sizes,
    slots: Vec<DeviceInfo>,
    cpu: &DeviceInfo,
    g: GpuLayers,
) -> std::result::Result<Plan, String> {
    let n = sizes.layers;
    let with = |k: usize| {
        let a = Assign {
            tower: 0,
            layers: (0..n).map(|i| usize::from(i >= k)).collect(),
        };
        let why = Reason::Offload {
            auto: g == GpuLayers::Auto,
            on_first: k,
            layers: n,
            first: slots[0].name.clone(),
            second: slots[1].name.clone(),
        };
        build(sizes, slots.clone(), cpu, &a, why)
    };
    match g {
        GpuLayers::Count(k) => {
            if k > n {
                return Err(format!(
                    "{k} layers asked for on {} but the model has {n}",
                    slots[0].name
                ));
            }
            let p = with(k);
            check(&p).map(|()| p)
        }
        GpuLayers::Auto => {
            // The most layers the first device holds; then the second must hold the rest.
            let best = (0..=n).rev().map(with).find(first_fits);
            match best {
                Some(p) => check(&p).map(|()| p),
                None => {
                    let p = with(0);
                    check(&p).map(|()| p)
                }
            }
        }
    }
}

/// Layers split over `devices` in proportion to the room each has after the towers and its reserves.
fn split_plan(
    sizes: &Sizes,
    devices: &[DeviceInfo],
    cpu: &DeviceInfo,
) -> std::result::Result<Plan, String> {
    let n = sizes.layers;
    let d = devices.len();
    // A device named twice shares its memory between its slots.
    let share = |i: usize| {
        let same = devices.iter().filter(|x| x.name == devices[i].name).count() as u64;
        devices[i].free / same
    };
    let room: Vec<f64> = (0..d)
        .map(|i| {
            let fixed = MARGIN
                + sizes.decoder_act
                + if i == 0 {
                    sizes.vision + sizes.cross + sizes.vision_act.max(sizes.cross_act)
                } else {
                    0
                };
            share(i).saturating_sub(fixed) as f64
        })
        .collect();
    let sum: f64 = room.iter().sum();
    let mut counts: Vec<usize> = room
        .iter()
        .map(|r| {
            if sum > 0.0 {
                (r / sum * n as f64).floor() as usize
            } else {
                n / d
            }
        })
        .collect();
    // Rounding leftovers go to the roomiest devices; every device takes at least one layer when it can.
    let mut left = n - counts.iter().sum::<usize>().min(n);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|a, b| room[*b].total_cmp(&room[*a]));
    while left > 0 {
        for &i in &order {
            if left > 0 {
                counts[i] += 1;
                left -= 1;
            }
        }
    }
    for i in 0..d {
        if counts[i] == 0 {
            if let Some(j) = (0..d).filter(|&j| counts[j] > 1).max_by_key(|&j| counts[j]) {
                counts[j] -= 1;
                counts[i] += 1;
            }
        }
    }
    let layers: Vec<usize> = counts
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| std::iter::repeat_n(i, c))
        .collect();
    let a = Assign { tower: 0, layers };
    let reason = Reason::Split {
        devices: devices.iter().map(|x| x.name.clone()).collect(),
        counts,
    };
    let p = build(sizes, devices.to_vec(), cpu, &a, reason);
    check(&p).map(|()| p)
}

/// Sums the plan's bytes per slot; the token embedding goes to the host (a `cpu` slot, added if none).
fn build(
    sizes: &Sizes,
    mut slots: Vec<DeviceInfo>,
    cpu: &DeviceInfo,
    a: &Assign,
    reason: Reason,
) -> Plan {
    let embed = match slots.iter().position(|s| s.is_cpu()) {
        Some(i) => i,
        None => {
            slots.push(cpu.clone());
            slots.len() - 1
        }
    };
    let n = a.layers.len();
    let head = a.layers.last().copied().unwrap_or(a.tower);
    let mut devices: Vec<DevicePlan> = slots
        .iter()
        .map(|s| DevicePlan {
            name: s.name.clone(),
            modules: Vec::new(),
            weight_bytes: 0,
            reserve_bytes: 0,
            free_bytes: s.free,
        })
        .collect();
    let t = &mut devices[a.tower];
    t.modules.push("vision tower + adapter".into());
    t.weight_bytes += sizes.vision;
    let mut tower_act = sizes.vision_act;
    let cross = (sizes.cross > 0).then_some(a.tower);
    if cross.is_some() {
        t.modules.push("cross encoder".into());
        t.weight_bytes += sizes.cross;
        tower_act = tower_act.max(sizes.cross_act);
    }
    t.reserve_bytes += tower_act;
    devices[embed].modules.push("token embedding".into());
    devices[embed].weight_bytes += sizes.embed;
    // Layer ranges per slot, in order.
    let mut i = 0;
    while i < n {
        let s = a.layers[i];
        let j = (i..n).find(|&j| a.layers[j] != s).unwrap_or(n);
        let d = &mut devices[s];
        d.modules.push(if j - i == 1 {
            format!("layer {i}")
        } else {
            format!("layers {i}–{}", j - 1)
        });
        d.weight_bytes += sizes.layer * (j - i) as u64;
        d.reserve_bytes += sizes.layer_kv * (j - i) as u64;
        i = j;
    }
    devices[head].modules.push("final norm + lm_head".into());
    devices[head].weight_bytes += sizes.head;
    let mut seen = Vec::new();
    for &s in a.layers.iter().chain([&head]) {
        if !seen.contains(&s) {
            seen.push(s);
            devices[s].reserve_bytes += sizes.decoder_act;
        }
    }
    for d in &mut devices {
        d.reserve_bytes += MARGIN;
    }
    Plan {
        devices,
        vision: a.tower,
        cross,
        embed,
        layers: a.layers.clone(),
        head,
        reason,
    }
}

/// Whether the first device (the GPU of an offload) holds its share.
fn first_fits(p: &Plan) -> bool {
    p.devices
        .first()
        .is_some_and(|d| d.weight_bytes + d.reserve_bytes <= d.free_bytes)
}

/// Every physical device holds what its slots were given (a name listed twice shares its memory).
fn check(p: &Plan) -> std::result::Result<(), String> {
    let mut short = Vec::new();
    let mut names: Vec<&str> = p.devices.iter().map(|d| d.name.as_str()).collect();
    names.dedup();
    let mut done: Vec<&str> = Vec::new();
    for name in names {
        if done.contains(&name) {
            continue;
        }
        done.push(name);
        let on: Vec<&DevicePlan> = p.devices.iter().filter(|d| d.name == name).collect();
        let need: u64 = on.iter().map(|d| d.weight_bytes + d.reserve_bytes).sum();
        let free = on[0].free_bytes;
        if need > free {
            let w: u64 = on.iter().map(|d| d.weight_bytes).sum();
            short.push(format!(
                "{name} needs {} ({} of weights + {} for the KV cache, activations and margin) but has {} free",
                gib(need),
                gib(w),
                gib(need - w),
                gib(free)
            ));
        }
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(short.join("; "))
    }
}

/// The change that would make it fit, tried from the smallest: offloading to the CPU, then bf16 (from f32),
/// int8, int4 and int4 with the tower quantized (each on the first device, offloaded if it is a GPU); with
/// where it puts the model.
fn advice(
    sizes: &Sizes,
    req: &PlacementRequest,
    devices: &[DeviceInfo],
    cpu: &DeviceInfo,
) -> Option<(Change, String)> {
    let first = devices.first()?;
    let mut tries: Vec<(Change, Sizes, PlacementRequest)> = Vec::new();
    if !first.is_cpu() && req.gpu_layers != Some(GpuLayers::Auto) {
        let r = PlacementRequest {
            gpu_layers: Some(GpuLayers::Auto),
            devices: req.devices.clone(),
        };
        tries.push((Change::OffloadAuto, sizes.clone(), r));
    }
    // On a GPU the default placement offloads by itself when the model does not fit.
    for (change, f) in &sizes.cheaper {
        tries.push((*change, f.clone(), PlacementRequest::default()));
    }
    for (change, s, r) in tries {
        let devs = if r.devices.is_empty() {
            &devices[..1]
        } else {
            devices
        };
        if let Ok(p) = try_plan(&s, &r, devs, cpu) {
            let on = if p.layers.iter().all(|&l| l == p.layers[0]) {
                format!(
                    "on {} with {} of weights",
                    card(&devs[0]),
                    gib(s.total_weights())
                )
            } else {
                let k = p.layers.iter().filter(|&&l| l == 0).count();
                format!(
                    "with {k} of {} layers on {} and the rest on {}",
                    p.layers.len(),
                    devs[0].name,
                    p.devices[1].name
                )
            };
            return Some((change, on));
        }
    }
    None
}

/// `cuda:0 (23.6 GiB free)`.
fn card(d: &DeviceInfo) -> String {
    format!("{} ({} free)", d.name, gib(d.free))
}
