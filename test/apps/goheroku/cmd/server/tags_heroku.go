//go:build heroku

package main

func init() { tags = "heroku" }
