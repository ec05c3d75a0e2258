"""What is adapted and how it is stored: adapters (peft), the Trainee (which weights train),
checkpoint files, and restoring a trained run onto a loaded backbone. Below training and export."""
