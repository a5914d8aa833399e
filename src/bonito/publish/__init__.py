"""What a run gives people: datasets (export), decontamination, the HTML report, and the
review web app."""
