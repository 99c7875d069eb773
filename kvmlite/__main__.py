from kvmlite.cli.main import entry

entry()
