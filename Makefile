# The two commands of the README: `make run` and `make test`.
.PHONY: setup run test lint

setup:
	@bash scripts/setup.sh

# The main job: train the offline default (Fashion-MNIST) with the TUI.
run: setup
	cargo run --release -- train --config config/fashion-mnist-quick.toml

test: setup
	cargo test --all-targets

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
