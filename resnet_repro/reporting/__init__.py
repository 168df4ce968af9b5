"""After a sweep: its rows, its statistics, its tables and its figures (`resnet-repro report`)."""
