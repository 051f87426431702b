"""api/middleware"""
