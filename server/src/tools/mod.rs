//! Developer tools behind the CLI: the fixture parity runner (`cogvlm parity`), the benchmark
//! (`cogvlm bench`, `--concurrency` in `bench_concurrency`), random-weight checkpoints
//! (`cogvlm make-checkpoint`).
pub mod bench;
pub mod bench_concurrency;
pub mod bench_floors;
pub mod make_checkpoint;
pub mod parity;
