"""Reads TensorBoard event files with TensorBoard's own reader
(EventAccumulator, which also drops events orphaned by a restart) and prints
{tag: [[step, value], ...]} as JSON.

Usage: python3 tensorboard_scalars.py DIR
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
