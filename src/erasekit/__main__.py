"""``python -m erasekit`` (also what ``accelerate launch -m erasekit`` runs)."""

from erasekit.cli.main import main

main()
