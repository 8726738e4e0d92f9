from rsthound.cli import run

run()
