//! Developer tools behind the CLI: the fixture parity runner (`cogvlm parity`), the benchmark
//! (`cogvlm bench`, `--concurrency` in `bench_concurrency`), random-weight checkpoints
//! (`cogvlm make-checkpoint`) and the vision tower's position probe (`cogvlm position-probe`).
pub mod bench;
pub mod bench_concurrency;
pub mod bench_floors;
pub mod make_checkpoint;
pub mod parity;
pub mod position_probe;
