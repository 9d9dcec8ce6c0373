from nodecache.cli import main

main()
