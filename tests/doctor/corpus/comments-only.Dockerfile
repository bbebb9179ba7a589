# only comments
# nothing else
