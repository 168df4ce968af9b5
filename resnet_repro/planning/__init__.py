"""Before a run: its cost (plan), its speed (bench), whether it fits (memory_fit), a rehearsal."""
