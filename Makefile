# The two commands of the README: `make run` and `make test`.
.PHONY: setup setup-tests run test lint

setup:
	@bash scripts/setup.sh

setup-tests:
	@bash scripts/setup.sh --for-tests

# The main job: train the offline default (Fashion-MNIST) with the TUI.
run: setup
	cargo run --release -- train --config config/fashion-mnist-quick.toml

test: setup-tests
	cargo test --all-targets

lint: setup-tests
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
