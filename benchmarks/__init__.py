"""Speed and memory harnesses. Each prints one JSON object; results are recorded in docs/PERFORMANCE.md."""
