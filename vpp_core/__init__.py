"""Cross-cutting helpers shared by every stage: configuration, atomic file writes, video I/O, seeding, precision."""
